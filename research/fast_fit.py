"""Does a data-dependent initialisation make memscan-cnn fit faster in the epochs before the stop?

On human-like noise memscan trails cleanlab's 5-fold pipeline because the model at the stop fits less (§20):
a tenth of cleanlab's 5 x 20 epochs is about 8 epochs. cleanlab's fold models train 20 epochs and are near
saturation, so a network that learns faster in its first epochs helps the short run more than the long ones.
airbench's recipe starts its network from a patch-whitening first layer and identity (Dirac) convolutions.
This applies those initialisations to memscan-cnn after ``prepare`` and runs the shipped pipeline unchanged:

    whiten   stem conv = the top principal directions of the normalised 3x3 patches, in +/- pairs
    dirac    every 3x3 conv whose output has at least its input's channels starts as the identity on them
    both

    python research/fast_fit.py NOISY.parquet TRUTH.csv --variants base,whiten,dirac,both --out bench-out/ff

(also ``whiten-frozen``: the weight fixed, as airbench does and as memscan now ships; ``whiten-unit``: the
directions at the default initialisation's norm; ``whiten16``: sixteen distinct directions, no pairs.) Every
variant starts from ``--stem learned``, the code this study was made on. BENCHMARKS.md §22.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn
from sklearn.metrics import average_precision_score, roc_auc_score

import memscan.pipeline as pipeline
from memscan.config import RunConfig


def patch_directions(prep, n_images: int = 5000, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors (descending) of the covariance of normalised k x k patches."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(prep.images), size=min(n_images, len(prep.images)), replace=False))
    x = torch.from_numpy(np.asarray(prep.images[idx])).float() / 255.0
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    x = (x - mean) / std
    patches = nn.functional.unfold(x, k).transpose(1, 2).reshape(-1, x.shape[1] * k * k).double()
    patches = patches - patches.mean(0)
    cov = patches.T @ patches / len(patches)
    val, vec = torch.linalg.eigh(cov)
    return val.flip(0).numpy(), vec.flip(1).T.numpy()     # rows are directions


def whiten_stem(model: nn.Module, prep, how: str = "whiten") -> None:
    conv = model.features[0]
    cout, cin, k, _ = conv.weight.shape
    val, vec = patch_directions(prep, k=k)
    if how == "whiten16":        # as many distinct directions as filters, no +/- pairs
        w = vec[:cout] / np.sqrt(val[:cout, None] + 1e-2)
    else:
        half = cout // 2
        w = vec[:half] / np.sqrt(val[:half, None] + 1e-2)
        w = np.concatenate([w, -w])[:cout]
    if how == "whiten-unit":     # the directions alone, each filter at the norm of the default initialisation
        w = w / np.linalg.norm(w, axis=1, keepdims=True) * conv.weight.detach().flatten(1).norm(dim=1).mean().item()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w.reshape(cout, cin, k, k)).to(conv.weight))
    if how == "whiten-frozen":
        conv.weight.requires_grad_(False)


def dirac_convs(model: nn.Module) -> None:
    for m in model.features[1:]:
        if isinstance(m, nn.Conv2d) and m.out_channels >= m.in_channels and m.kernel_size == (3, 3):
            with torch.no_grad():
                torch.nn.init.dirac_(m.weight[:m.in_channels])


def patched_prepare(variant: str):
    original = pipeline.prepare

    def prepare(*args, **kwargs):
        prep = original(*args, **kwargs)
        if variant.startswith("whiten") or variant == "both":
            whiten_stem(prep.model, prep, variant)
        if variant in ("dirac", "both"):
            dirac_convs(prep.model)
        return prep
    return original, prepare


def score(report: Path, truth: Path) -> dict:
    t = pq.read_table(report, columns=["path", "mislabel_score", "p_given", "category"]).to_pydict()
    with open(truth, newline="") as f:
        flipped = {r["path"]: r["flipped"].strip().lower() in ("1", "true") for r in csv.DictReader(f)}
    y = np.array([flipped[p] for p in t["path"]])
    s = np.array(t["mislabel_score"])
    flagged = np.array([c == "mislabeled" for c in t["category"]])
    return {"auroc": roc_auc_score(y, s), "ap": average_precision_score(y, s),
            "auroc_1_minus_p": roc_auc_score(y, 1 - np.array(t["p_given"])),
            "flagged": float(flagged.mean()), "true_rate": float(y.mean()),
            "precision": float(y[flagged].mean()) if flagged.any() else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest", type=Path)
    ap.add_argument("truth", type=Path)
    ap.add_argument("--variants", default="base,whiten,dirac,both")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rank-threshold", type=float, default=None)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rows = []
    for variant in a.variants.split(","):
        original, prepare = patched_prepare(variant)
        pipeline.prepare = prepare
        cfg = RunConfig(augment="crop-flip", seed=a.seed, stem="learned")   # the variants set the stem themselves
        if a.rank_threshold is not None:
            cfg = cfg.replace(rank_threshold=a.rank_threshold)
        t = time.perf_counter()
        try:
            res = pipeline.run(a.manifest, cfg, out=a.out / variant, overwrite=True)
        finally:
            pipeline.prepare = original
        row = {"variant": variant, "seed": a.seed, "wall_s": time.perf_counter() - t, "epochs": res.summary.get("epochs_trained"),
               "train_accuracy": res.summary.get("train_accuracy"), **score(res.report_path, a.truth)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if a.json:
        a.json.write_text(json.dumps({"manifest": str(a.manifest), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
