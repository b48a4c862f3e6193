"""The embedded demo dataset: scikit-learn's bundled handwritten digits (1,797 8x8 images, shipped
with scikit-learn, no download) written as a class-per-folder PNG dataset with a known 10% of the
labels flipped, plus ``truth.csv`` (path, true label, flipped) to score the detection."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .cache import default_cache_dir
from .noise import inject_noise

DEMO_RATE = 0.10
DEMO_SEED = 0


def build_demo(dest: Path | None = None) -> tuple[Path, Path]:
    """Write (once) the noisy digits folder; returns (dataset folder, truth.csv)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(dest) if dest is not None else default_cache_dir() / "demo-digits"
    data, truth_file = root / "digits", root / "truth.csv"
    if truth_file.exists():
        return data, truth_file
    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    true = digits.target.astype(np.int64)
    noisy = inject_noise(true, 10, rate=DEMO_RATE, kind="symmetric", seed=DEMO_SEED)
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    rows = []
    for i, (img, given) in enumerate(zip(images, noisy.labels)):
        rel = f"{given}/digit-{i:04d}.png"
        (tmp / "digits" / str(given)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(tmp / "digits" / rel)
        rows.append((rel, int(true[i]), int(noisy.flipped[i])))
    with open(tmp / "truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true_label", "flipped"])
        w.writerows(rows)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another process built it first: remove exactly what this call wrote
        for rel, *_ in rows:
            (tmp / "digits" / rel).unlink(missing_ok=True)
        (tmp / "truth.csv").unlink(missing_ok=True)
        for d in sorted({(tmp / "digits" / r).parent for r, *_ in rows}) + [tmp / "digits", tmp]:
            try:
                d.rmdir()
            except OSError:
                pass
    return data, truth_file
