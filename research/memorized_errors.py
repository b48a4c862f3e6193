"""Learned label errors: can a run tell a label error it has memorized from a hard image it has memorized?

On nearly clean data the model fits nearly every label, wrong ones included (MNIST test: 99.98%), so a human
label error ends in `memorized`, not `mislabeled` (BENCHMARKS.md §20). Before it was learned, though, a label
error should have been predicted as its true class, steadily; a hard image of its own class less steadily, or
as its own class. This replays finished runs: for every sample, the training steps' predictions in the epochs
before the sample was learned (``learning_time``), the most frequent other class there and its share, and
candidate rules/scores built on them, against a truth mask.

    python research/memorized_errors.py RUN --truth-json benchmarks/results/real-errors-mnist-test-machineA.json
    python research/memorized_errors.py RUN --truth-csv RUN/../truth.csv        # eval-noise's truth file
    python research/memorized_errors.py RUN                                     # no truth: counts only

Supports the decision recorded in BENCHMARKS.md (session 14, "Learned label errors").
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from memscan.evaluate import detection_metrics
from memscan.explain import before_learned
from memscan.report import read_metadata, read_report
from memscan.scores import percentile
from memscan.trajectories import read_predictions


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--truth-json", type=Path, help="real_errors.py results (their error_list paths)")
    ap.add_argument("--truth-csv", type=Path, help="eval-noise truth.csv (path, flipped)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    df = read_report(a.run / "report.parquet").to_pandas().sort_values("sample_id").reset_index(drop=True)
    labels = df["label"].to_numpy()
    learned = df["learning_time"].to_numpy()
    alt, count, seen = before_learned(read_predictions(a.run / "trajectories"), labels, learned,
                                       len(read_metadata(a.run / "report.parquet").dataset.classes))
    share = np.where(seen > 0, count / np.maximum(seen, 1), 0.0)
    truth = None
    if a.truth_json:
        errs = {e["path"] for e in json.loads(a.truth_json.read_text())["error_list"]}
        truth = df["path"].isin(errs).to_numpy()
    elif a.truth_csv:
        t = pd.read_csv(a.truth_csv)
        truth = df["path"].map(dict(zip(t["path"], t["flipped"].astype(bool)))).fillna(False).to_numpy(bool)
    cat = df["category"].to_numpy()
    fitted = df["pred"].to_numpy() == labels
    steady = (share >= 0.6) & (seen >= 2)
    rules = {
        "mislabeled (shipped)": cat == "mislabeled",
        "memorized (shipped)": cat == "memorized",
        "memorized & steady other class before learned": (cat == "memorized") & steady,
        "fitted & learned late & steady other class": fitted & steady & (learned >= 2),
    }
    n = len(df)
    res = {"run": str(a.run), "n": n, "truth": None if truth is None else int(truth.sum()), "rules": {}, "scores": {}}
    for name, m in rules.items():
        row = {"flagged": int(m.sum()), "share": round(float(m.mean()), 5)}
        if truth is not None:
            row.update(hits=int((m & truth).sum()), precision=round(float(truth[m].mean()), 3) if m.any() else None,
                       recall=round(float(m[truth].mean()), 3))
        res["rules"][name] = row
    if truth is not None:
        mis = df["mislabel_score"].to_numpy()
        cands = {
            "mislabel_score (shipped)": mis,
            "csl": df["csl"].to_numpy(),
            "-aum (all epochs)": -df["aum"].to_numpy(),
            "learning_time": learned.astype(float),
            "pre-learning steady share": share * (learned >= 1),
            "mislabel_score + pre-learning share (pct mean)": percentile(mis) + percentile(share * (learned >= 1)),
            "max(mislabel_score, csl pct)": np.maximum(percentile(mis), percentile(df["csl"].to_numpy())),
        }
        for name, s in cands.items():
            m = detection_metrics(s, truth)
            order = np.argsort(-s, kind="stable")
            rank = np.empty(n, int)
            rank[order] = np.arange(1, n + 1)
            res["scores"][name] = {"auroc": round(m["auroc"], 4), "ap": round(m["ap"], 4),
                                   "in_top_100": int((rank[truth] <= 100).sum()),
                                   "ranks": sorted(int(r) for r in rank[truth])}
        res["errors"] = [{"path": df["path"].iloc[i], "category": cat[i], "learned": int(learned[i]),
                          "pre_alt": int(alt[i]), "pre_share": round(float(share[i]), 2), "seen": int(seen[i])}
                         for i in np.flatnonzero(truth)[:40]]
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
