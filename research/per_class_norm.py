"""Issue 13 candidate: does normalising mislabel_score within each class help on human-like noise?

Instance-dependent flips concentrate on confusable class pairs, so a score ranked within the given class
(or the predicted class) might separate better. Replays on eval-noise seed folders (report.parquet +
truth.csv): AUROC of the shipped score, its percentile within the given label, within the predicted label,
and the mean of the shipped and the within-given-label percentiles.

    python research/per_class_norm.py RUN/seed-0 [...] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score


def replay(run: Path) -> dict:
    d = pd.read_parquet(run / "report.parquet").merge(pd.read_csv(run / "truth.csv")[["path", "flipped"]], on="path")
    y, s = d["flipped"].to_numpy(), d["mislabel_score"]
    given = d.groupby("label_name")["mislabel_score"].rank(pct=True)
    pred = d.groupby("pred_name")["mislabel_score"].rank(pct=True)
    return {"run": str(run), **{k: round(float(roc_auc_score(y, v)), 4) for k, v in (
        ("shipped", s), ("within_given_class", given), ("within_predicted_class", pred),
        ("blend_shipped_and_within_given", (s + given) / 2))}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = [replay(r) for r in a.runs]
    for r in rows:
        print(r)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
