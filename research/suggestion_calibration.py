"""How often is memscan's suggested label the true one? (issue 16: a calibration table for auto-relabelling)

For eval-noise runs (a seed folder with report.parquet and truth.csv) on a dataset whose labels are the truth,
tabulates, among the samples whose suggestion differs from the given label (the relabel proposals), the
fraction where the suggestion is the true label, by ``suggestion_agreement`` band and by ``p_suggested`` band;
the same within the `mislabeled` category; and, for the flipped samples, how often three candidate suggestions
are right: the stop point's class (shipped), confident learning's class, and the late window's most frequent
prediction (from the trajectories).

    python research/suggestion_calibration.py DATASET RUN [RUN ...] --json research/results/x.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from memscan.data import load_index

AGREEMENT_BANDS = [(0.0, 0.5), (0.5, 0.75), (0.75, 1.0), (1.0, 1.01)]
P_BANDS = [(0.0, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 1.01)]


def late_mode(run: Path, n: int, k: int) -> np.ndarray:
    """Most frequent training-step prediction over the second half of the epochs (ties: lowest class)."""
    t = pd.read_parquet(run / "trajectories", columns=["epoch", "sample_id", "pred"])
    epochs = t["epoch"].max() + 1
    late = t[(t["epoch"] >= epochs // 2) & (t["pred"] >= 0)]
    counts = np.zeros((n, k), np.int32)
    np.add.at(counts, (late["sample_id"].to_numpy(), late["pred"].to_numpy().astype(np.int64)), 1)
    return counts.argmax(1)


def bands(df, col, edges):
    rows = []
    for lo, hi in edges:
        s = df[(df[col] >= lo) & (df[col] < hi)]
        rows.append({"band": f"[{lo:.2f}, {min(hi, 1.0):.2f}{']' if hi > 1 else ')'}", "proposals": int(len(s)),
                     "suggestion_is_true": None if not len(s) else round(float(s["right"].mean()), 3),
                     "given_was_wrong": None if not len(s) else round(float(s["flipped"].mean()), 3)})
    return rows


def one(dataset, run: Path) -> dict:
    truth_table = load_index(dataset)
    true = dict(zip(truth_table.paths, truth_table.labels))
    df = pd.read_parquet(run / "report.parquet")
    df["true"] = df["path"].map(true)
    df["flipped"] = df["label"] != df["true"]
    df["right"] = df["suggested_label"] == df["true"]
    k = len(truth_table.class_names)
    mode = late_mode(run, len(df), k)
    prop = df[df["suggested_label"] != df["label"]]
    mis = prop[prop["category"] == "mislabeled"]
    fl = df[df["flipped"]]
    return {
        "run": str(run), "samples": len(df), "flipped": int(df["flipped"].sum()),
        "proposals": int(len(prop)), "proposals_right": round(float(prop["right"].mean()), 3),
        "by_agreement": bands(prop, "suggestion_agreement", AGREEMENT_BANDS),
        "by_p_suggested": bands(prop, "p_suggested", P_BANDS),
        "combined": [{"rule": f"p_suggested >= {pt} and agreement >= {at}",
                      "proposals": int(len(sel := prop[(prop["p_suggested"] >= pt) & (prop["suggestion_agreement"] >= at)])),
                      "suggestion_is_true": None if not len(sel) else round(float(sel["right"].mean()), 3)}
                     for pt, at in ((0.5, 1.0), (0.7, 0.0), (0.7, 1.0), (0.9, 0.0))],
        "mislabeled_category": {"proposals": int(len(mis)), "right": round(float(mis["right"].mean()), 3) if len(mis)
                                else None, "by_agreement": bands(mis, "suggestion_agreement", AGREEMENT_BANDS)},
        "flipped_right": {
            "stop_point_class (shipped)": round(float((fl["suggested_label"] == fl["true"]).mean()), 3),
            "confident_class": round(float((fl["confident_class"] == fl["true"]).mean()), 3),
            "late_window_mode": round(float((mode[fl["sample_id"].to_numpy()] == fl["true"]).mean()), 3),
        },
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path, help="the clean dataset (its labels are the truth)")
    ap.add_argument("runs", type=Path, nargs="+", help="eval-noise seed folders")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    out = [one(a.dataset, r) for r in a.runs]
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
