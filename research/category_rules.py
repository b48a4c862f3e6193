"""Which rule should decide the ``mislabeled`` category? Replays candidate rules on finished runs (the
report's stop-point columns and the per-epoch trajectories), without retraining.

For each run it prints, per rule, the fraction flagged and, when the run folder holds eval-noise's
``truth.csv``, the precision, recall and estimated / true noise fraction. Supports the choice of the
category rule for nearly clean data (issue 13, BENCHMARKS.md "Nearly clean data").

    python research/category_rules.py bench-out/nearly-clean/cifar10-test/shipped \
        bench-out/nearly-clean/cifar10-test/symmetric-0.02/seed-0 ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from memscan.report import read_frame, read_metadata
from memscan.trajectories import read_epochs


def late_window(run: Path, n: int, first: int):
    """Per sample over the late window (epochs >= first, 0-based): mean margin, fraction correct."""
    margin, correct, epochs = np.zeros(n), np.zeros(n), 0
    for rec in read_epochs(run / "trajectories"):
        if rec.epoch >= first:
            margin += np.nan_to_num(rec.margin.astype(np.float64))
            correct += rec.correct
            epochs += 1
    return margin / max(epochs, 1), correct / max(epochs, 1)


def rules(df: pd.DataFrame, late_margin, late_correct) -> dict:
    differs = (df["confident_class"] >= 0) & (df["confident_class"] != df["label"])
    shipped = df["category"] == "mislabeled"
    out = {"shipped (CL differs, late margin < 0)": shipped}
    out["+ never correct in the late window"] = shipped & (late_correct == 0)
    out["+ predicted class differs"] = shipped & (df["pred"] != df["label"])
    for t in (0.5, 0.7, 0.9):
        out[f"+ p_pred >= {t}"] = shipped & (df["p_pred"] >= t)
    for e in (0.1, 0.05, 0.02):
        out[f"+ p_given < {e}"] = shipped & (df["p_given"] < e)
    for d in (1.0, 2.0, 3.0):
        out[f"CL differs, late margin < -{d:g}"] = differs & (late_margin < -d)
    out["never correct late, p_given < 0.05"] = differs & (late_correct == 0) & (df["p_given"] < 0.05)
    # scale-free: the given label loses by more than the model's typical winning margin
    scale = float(np.median(late_margin[late_margin > 0])) if (late_margin > 0).any() else 1.0
    for c in (1.0, 1.25, 1.5, 1.75, 2.0):
        out[f"CL differs, late margin < -{c:g} x median winning margin"] = differs & (late_margin < -c * scale)
    return out


def evaluate(run: Path) -> dict:
    meta = read_metadata(run)
    df = read_frame(run, ["path", "label", "pred", "p_pred", "p_given", "confident_class", "category"])
    first = meta.stop.mislabel_window[0] - 1
    late_margin, late_correct = late_window(run, len(df), first)
    truth = None
    if (run / "truth.csv").exists():
        t = pd.read_csv(run / "truth.csv").set_index("path")
        truth = t.loc[df["path"], "flipped"].to_numpy().astype(bool)
    res = {"run": str(run), "n": len(df), "epochs": meta.stop.epochs_trained,
           "stop_accuracy": float((df["pred"] == df["label"]).mean()), "rules": {}}
    for name, flag in rules(df, late_margin, late_correct).items():
        flag = np.asarray(flag, bool)
        r = {"flagged_fraction": round(float(flag.mean()), 4)}
        if truth is not None:
            tp = int((flag & truth).sum())
            r.update(precision=round(tp / max(flag.sum(), 1), 3), recall=round(tp / max(truth.sum(), 1), 3),
                     estimate_vs_true=round(float(flag.mean() / max(truth.mean(), 1e-9)), 2))
        res["rules"][name] = r
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    results = [evaluate(r) for r in a.runs]
    for r in results:
        print(f"\n{r['run']}  n={r['n']} epochs={r['epochs']} accuracy at stop={r['stop_accuracy']:.3f}")
        for name, v in r["rules"].items():
            print(f"  {name:45s} " + "  ".join(f"{k}={x}" for k, x in v.items()))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
