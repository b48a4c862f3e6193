"""How many samples does memscan flag on nearly clean data, and how close is its noise estimate to the truth
at low noise? The regime of a CI gate: published audits put CIFAR-10's test-set label errors near 0.5% and
MNIST's near 0.15%.

For each set of ../shared/data (as shipped, or a per-class subset) it runs ``memscan run`` with the
shipped defaults (the JSON records their model, stem and threshold) and records the fraction flagged
``mislabeled`` (with the epochs, the accuracy on the given labels at the stop and the time); with ``--rates`` it also injects that much symmetric (or
``--kind``) noise and records the estimated vs the true rate and the category's precision and recall.
Run folders are kept under ``--work`` so that category rules can be replayed offline.

    python benchmarks/nearly_clean.py cifar10/test mnist/test --rates 0.01,0.02,0.05 \
        --work bench-out/nearly-clean --out benchmarks/results/nearly-clean.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from memscan.config import RunConfig
from memscan.data import load_index
from memscan.eval_noise import eval_noise
from memscan.pipeline import run
from memscan.report import read_frame

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def subset(name: str, per_class: int | None, dest: Path) -> Path:
    """``name`` ("cifar10/test") as shipped, or its first ``per_class`` images per class as a Parquet."""
    src = DATA / f"{name}.parquet"
    if per_class is None:
        return src
    import pyarrow as pa
    import pyarrow.parquet as pq
    t = load_index(src)
    keep = np.sort(np.concatenate([np.flatnonzero(t.labels == c)[:per_class] for c in range(t.num_classes)]))
    s = t.subset(keep)
    dest.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"path": s.paths, "label_name": [s.class_names[i] for i in s.labels],
                             "image": pa.array(s.image_bytes, pa.binary())}), dest)
    return dest


def as_shipped(data: Path, cfg: RunConfig, out: Path) -> dict:
    t = time.perf_counter()
    r = run(data, cfg, out=out, overwrite=True)
    df = read_frame(r.report_path, ["category"])
    return {"n": r.summary["n"], "flagged_fraction": float((df["category"] == "mislabeled").mean()),
            "epochs": r.summary["epochs_trained"], "stop": r.summary["stop_reason"],
            "train_acc_at_stop": r.summary["stop_acc"], "seconds": round(time.perf_counter() - t, 1),
            "run": str(r.out_dir)}


def injected(data: Path, cfg: RunConfig, out: Path, rate: float, kind: str) -> dict:
    t = time.perf_counter()
    r = eval_noise(data, cfg, rate=rate, kind=kind, out=out, overwrite=True)
    s, c = r["per_seed"][0], r["category"]
    return {"rate": rate, "kind": kind, "true_fraction": c["true_noise_fraction"]["mean"],
            "estimated_fraction": c["estimated_noise_fraction"]["mean"],
            "relative_error": c["estimated_noise_fraction"]["mean"] / c["true_noise_fraction"]["mean"] - 1,
            "precision": c["precision"]["mean"], "recall": c["recall"]["mean"],
            "auroc": s["scores"]["mislabel_score"]["auroc"], "epochs": s["stop"]["epochs_trained"],
            "seconds": round(time.perf_counter() - t, 1), "run": s["run"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="+", help="e.g. cifar10/test mnist/test cifar10/train")
    ap.add_argument("--per-class", type=int, default=None, help="first N images per class (default: all)")
    ap.add_argument("--rates", default="", help="comma-separated injected noise rates, e.g. 0.01,0.02,0.05")
    ap.add_argument("--kind", default="symmetric")
    ap.add_argument("--work", type=Path, default=Path("bench-out/nearly-clean"))
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    res = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                      f"torch {torch.__version__}", "date": str(date.today()),
           "config": {k: getattr(RunConfig().resolved(), k) for k in ("model", "stem", "rank_threshold")},
           "per_class": a.per_class, "sets": {}}
    rates = [float(r) for r in a.rates.split(",") if r.strip()]
    for name in a.sets:
        tag = name.replace("/", "-") + (f"-{a.per_class}pc" if a.per_class else "")
        data = subset(name, a.per_class, a.work / "data" / f"{tag}.parquet")
        aug = "crop" if name.startswith("mnist") else "crop-flip"
        cfg = RunConfig(augment=aug)
        row = {"as_shipped": as_shipped(data, cfg, a.work / tag / "shipped")}
        row["injected"] = [injected(data, cfg, a.work / tag / f"{a.kind}-{r}", r, a.kind) for r in rates]
        res["sets"][tag] = row
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps({tag: row}, indent=1), flush=True)


if __name__ == "__main__":
    main()
