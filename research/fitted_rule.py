"""Where do the flips the `mislabeled` category misses go on a model that fits its data, and can a run tell that
it is such a model? (issue 13, point 4; BENCHMARKS.md §26)

On MNIST at 1-5% noise the category's precision is 1.00 and its recall 0.60-0.74: confident learning's per-class
threshold is the mean p(class) over the samples labelled with it, about 0.99 on a fitted model, so a flip the
annealed model predicts as its true class with p = 0.8 has no confident alternative class and lands in
`atypical` or `ok`. This replays, on finished runs, the shipped rule plus "the model predicts another class with
p >= T, and the given label loses in the late window (negative mean margin, never predicted)", and prints the
statistics a run could use to tell a fitted model from an underfit one (accuracy on the given labels; the median
and the 10th percentile of p(given) over the samples predicted as given).

Truth: ``truth.csv`` in the run folder (``path,flipped``, as eval-noise writes it), else the true class read
from the path (``<split>/<class>/<file>``, as in ../shared/data).

    python research/fitted_rule.py RUN ... --json research/results/fitted-rule-machineB.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from category_rules import late_window  # noqa: E402  (the sibling research script)

from memscan.report import read_frame, read_metadata  # noqa: E402

THRESHOLDS = (0.5, 0.7, 0.8, 0.9)


def truth(run: Path, df: pd.DataFrame) -> np.ndarray:
    t = run / "truth.csv"
    if t.exists():
        tr = pd.read_csv(t)[["path", "flipped"]]
        return df[["path"]].merge(tr, on="path", how="left")["flipped"].fillna(0).astype(bool).to_numpy()
    return (df["label_name"] != df["path"].str.split("/").str[1]).to_numpy()


def figures(flag: np.ndarray, flipped: np.ndarray) -> dict:
    tp = int((flag & flipped).sum())
    out = {"flagged": round(float(flag.mean()), 5), "precision": round(tp / max(int(flag.sum()), 1), 3)}
    if flipped.any():
        out |= {"recall": round(tp / int(flipped.sum()), 3), "estimated_vs_true": round(flag.mean() / flipped.mean(), 3)}
    return out


def replay(run: Path) -> dict:
    df, meta = read_frame(run), read_metadata(run)
    flipped = truth(run, df)
    margin, correct = late_window(run, len(df), meta.stop.mislabel_window[0] - 1)
    loses = (margin < 0) & (correct == 0)
    shipped = (df["category"] == "mislabeled").to_numpy()
    right = (df["pred"] == df["label"]).to_numpy()
    p_pred, p_given = df["p_pred"].to_numpy(), df["p_given"].to_numpy()
    categories = df["category"].to_numpy()
    row = {"run": str(run), "n": len(df), "true_fraction": round(float(flipped.mean()), 4),
           "fit": {"accuracy": round(float(right.mean()), 4),
                   "median_p_given_if_right": round(float(np.median(p_given[right])), 4),
                   "p10_p_given_if_right": round(float(np.quantile(p_given[right], 0.1)), 4)},
           "flips_by_category": {c: int(((categories == c) & flipped).sum()) for c in ("mislabeled", "atypical",
                                                                                       "memorized", "ok")},
           "rules": {"shipped": figures(shipped, flipped)}}
    for t in THRESHOLDS:
        row["rules"][f"shipped, or predicts another class at p >= {t} and loses"] = figures(
            shipped | (~right & loses & (p_pred >= t)), flipped)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = []
    for run in a.runs:
        rows.append(replay(run))
        print(json.dumps(rows[-1]), flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
