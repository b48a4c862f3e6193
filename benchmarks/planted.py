"""Plant duplicates, train/test leaks and degraded images into CIFAR-10 subsets, with a truth file.

Writes two Parquet-bytes datasets (the shape of ``../shared/data``: path, label, label_name, image)
and ``truth.json``:
- ``train.parquet``: ``--per-class`` images of each class from CIFAR-10 train, plus ``--dups`` planted
  copies of some of them (each made by one transform: JPEG re-encoding, resizing, a small crop,
  colour jitter, or crop + jitter), a tenth of them given another class's label (conflicting
  duplicates), and ``--degraded`` images darkened, blurred, blanked, washed out or turned grayscale.
- ``test.parquet``: ``--test-per-class`` images of CIFAR-10 test, plus ``--leaks`` transformed copies
  of training images (leaks).

    python benchmarks/planted.py ../shared/data/cifar10 bench-out/planted --per-class 500

Every copy gets a fresh path, so nothing but its pixels tells it apart. Seeded.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageEnhance, ImageFilter

TRANSFORMS = ("reencode", "resize", "crop", "jitter", "crop+jitter")
DEGRADATIONS = ("dark", "blurry", "blank", "bright", "grayscale")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def transform(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    if kind == "reencode":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(30, 60)))
        return buf.getvalue()
    if kind == "resize":   # a copy saved at another size: the decoder brings it back to the set's size
        s = int(rng.choice([20, 24, 48, 64]))
        return _png(img.resize((s, s), Image.Resampling.BICUBIC))
    if "crop" in kind:     # 2-4 pixels off each side of a 32-pixel image: 12-25% of the width
        l, t, r, b = (int(v) for v in rng.integers(1, 3, size=4))
        img = img.crop((l, t, w - r, h - b)).resize((w, h), Image.Resampling.BICUBIC)
    if "jitter" in kind:
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.25))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.75, 1.25))
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    return _png(img)


def degrade(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if kind == "dark":
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.08, 0.2))
    elif kind == "bright":
        a = np.asarray(img, dtype=np.float32)
        img = Image.fromarray(np.clip(255 - (255 - a) * rng.uniform(0.08, 0.2), 0, 255).astype(np.uint8))
    elif kind == "blurry":
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 2.5)))
    elif kind == "blank":
        tone = tuple(int(v) for v in rng.integers(0, 256, size=3))
        img = Image.new("RGB", img.size, tone)
        a = np.asarray(img, dtype=np.int16) + rng.integers(-2, 3, size=(img.size[1], img.size[0], 1))
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    elif kind == "grayscale":
        img = img.convert("L").convert("RGB")
    return _png(img)


def subset(table: pa.Table, per_class: int, rng) -> pa.Table:
    labels = np.asarray(table.column("label"))
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                                  for c in np.unique(labels)]))
    return table.take(idx)


def plant(src: Path, out: Path, *, per_class: int, test_per_class: int, dups: int, leaks: int, degraded: int,
          conflict_share: float = 0.1, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    train = subset(pq.read_table(src / "train.parquet"), per_class, rng)
    test = subset(pq.read_table(src / "test.parquet"), test_per_class, rng)
    by_label = dict(zip(train.column("label").to_pylist(), train.column("label_name").to_pylist()))
    rows = train.select(["path", "label", "label_name", "image"]).to_pylist()
    n0 = len(rows)
    truth = {"train_n": n0, "duplicates": [], "leaks": [], "degraded": [], "classes": len(by_label), "seed": seed}
    picks = rng.choice(n0, dups + degraded, replace=False)   # an image is copied or degraded, never both
    for j, i in enumerate(picks[:dups]):
        kind = TRANSFORMS[j % len(TRANSFORMS)]
        label = rows[i]["label"]
        conflict = j < round(conflict_share * dups)
        if conflict:
            label = int(rng.choice([c for c in by_label if c != label]))
        path = f"train/planted/dup{j:05d}.png"
        rows.append({"path": path, "label": label, "label_name": by_label[label],
                     "image": transform(rows[i]["image"], kind, rng)})
        truth["duplicates"].append({"original": rows[i]["path"], "copy": path, "transform": kind,
                                    "conflict": conflict})
    for j, i in enumerate(picks[dups:]):
        kind = DEGRADATIONS[j % len(DEGRADATIONS)]
        rows[i] = dict(rows[i], image=degrade(rows[i]["image"], kind, rng))
        truth["degraded"].append({"path": rows[i]["path"], "kind": kind})
    trows = test.select(["path", "label", "label_name", "image"]).to_pylist()
    for j, i in enumerate(rng.choice(n0, leaks, replace=False)):
        kind = TRANSFORMS[j % len(TRANSFORMS)]
        path = f"test/planted/leak{j:05d}.png"
        trows.append({"path": path, "label": rows[i]["label"], "label_name": rows[i]["label_name"],
                      "image": transform(rows[i]["image"], kind, rng)})
        truth["leaks"].append({"test": path, "train": rows[i]["path"], "transform": kind})
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("path", pa.string()), ("label", pa.int64()), ("label_name", pa.string()),
                        ("image", pa.binary())])
    pq.write_table(pa.Table.from_pylist(rows, schema), out / "train.parquet")
    pq.write_table(pa.Table.from_pylist(trows, schema), out / "test.parquet")
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="folder with CIFAR-10 train.parquet and test.parquet")
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--dups", type=int, default=250)
    ap.add_argument("--leaks", type=int, default=100)
    ap.add_argument("--degraded", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t = plant(a.src, a.out, per_class=a.per_class, test_per_class=a.test_per_class, dups=a.dups, leaks=a.leaks,
              degraded=a.degraded, seed=a.seed)
    print(f"wrote {a.out}: {t['train_n'] + len(t['duplicates'])} train images ({len(t['duplicates'])} planted copies), "
          f"{len(t['leaks'])} leaks, {len(t['degraded'])} degraded")


if __name__ == "__main__":
    main()
