"""The memorized/atypical rule replayed on finished runs (issue 14): how many samples each category takes.

Replays ``scores.compute_scores``' rule from the report's columns (sgal, category, pred, label,
confident_class): high = sgal above Tukey's fence on its raw values; memorized = high, not mislabeled, the
given label predicted; atypical = high, not mislabeled, not predicted, and no other class confidently
claiming it; "high" also needs a mean loss to the peak above ``MEMORIZED_MIN_LOSS``. Prints one line per report: samples, accuracy at the stop, and the share of each category.

    python research/category_replay.py RUN [RUN ...] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from memscan.report import read_metadata
from memscan.scores import MEMORIZED_MIN_LOSS, upper_fence


def replay(report: Path) -> dict:
    r = pq.read_table(report, columns=["sgal", "pred", "label", "category", "confident_class"]).to_pandas()
    sgal, epochs = r["sgal"].to_numpy(), read_metadata(report).stop.csg_epochs
    high = (sgal > upper_fence(sgal)) & (sgal > MEMORIZED_MIN_LOSS * max(epochs, 1))
    mis = (r["category"] == "mislabeled").to_numpy()
    fit = (r["pred"] == r["label"]).to_numpy()
    alt = r["confident_class"].to_numpy()
    free = (alt < 0) | (alt == r["label"].to_numpy())
    return {"report": str(report), "samples": len(r), "accuracy": round(float(fit.mean()), 3),
            "mislabeled": round(float(mis.mean()), 4),
            "memorized": round(float((high & ~mis & fit).mean()), 4),
            "atypical": round(float((high & ~mis & ~fit & free).mean()), 4)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = [replay(r / "report.parquet" if r.is_dir() else r) for r in a.runs]
    for x in rows:
        print(f"{x['report'][:60]:60s} n={x['samples']:6d} acc={x['accuracy']:.2f} mislabeled={x['mislabeled']:.3f} "
              f"memorized={x['memorized']:.3f} atypical={x['atypical']:.3f}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
