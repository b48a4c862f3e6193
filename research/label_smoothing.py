"""Does label smoothing help the default run rank human-like label errors? (issue 13, point 3; BENCHMARKS.md §24)

Each CONFIG is a noisy manifest written by ``research/noisy_manifest.py`` from a §0 benchmark run
(``DIR/CONFIG.parquet`` and ``DIR/CONFIG-truth.csv``), so every variant audits exactly §0's noise. Each is run
with the default recipe and ``RunConfig(label_smoothing=LS)`` (not a CLI option), then scored as
``memscan eval-noise --from-run RUN --truth TRUTH`` scores it.

    python research/label_smoothing.py bench-out/s17/ls inst20-500pc,pair20-500pc,... --ls 0,0.1,0.2 \\
        --json research/results/label-smoothing-machineC.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from memscan.config import RunConfig
from memscan.eval_noise import evaluate_report_with_truth
from memscan.pipeline import run
from memscan.report import read_metadata


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("configs")
    ap.add_argument("--ls", default="0,0.1,0.2")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    results = []
    for c in a.configs.split(","):
        for ls in (float(v) for v in a.ls.split(",")):
            out = a.dir / f"{c}-ls{ls:g}"
            if not (out / "report.parquet").exists():
                run(a.dir / f"{c}.parquet", RunConfig(label_smoothing=ls), out=out, overwrite=out.exists())
            d = evaluate_report_with_truth(out, a.dir / f"{c}-truth.csv")
            m = d["scores"]["mislabel_score"]
            row = {"config": c, "label_smoothing": ls, "epochs": read_metadata(out).stop.epochs_trained,
                   "auroc": round(m["auroc"], 4), "ap": round(m["ap"], 4), "category": d.get("category")}
            results.append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
