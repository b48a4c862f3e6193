"""Where does agreement with reference memorization peak? (issue 14, item 2)

Given a reference (``memscan memorization`` folder) and a long run of the same dataset (``memscan run
--stop none --max-epochs E``), replays the run's trajectories epoch by epoch: CSG and SGAL summed up to
each epoch t, the cumulative loss (CSL), the learning time so far and the running mean margin, each
correlated (Pearson, Spearman, cosine) with the reference, next to the weight norm and mean sample
gradient of that epoch (and validation loss when the run had ``--val``). Prints a table and writes JSON.

    python research/memorization_agreement.py bench-out/memo/ref-cifar200 bench-out/memo/long-cifar200 \\
        --json research/results/memorization-agreement-cifar10-2k-machineA.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from memscan.memorization import cosine, pearson, spearman
from memscan.memorization_run import read_memorization
from memscan.report import read_frame
from memscan.scores import percentile
from memscan.trajectories import read_epochs


def per_epoch(ref_dir: Path, run: Path) -> dict:
    ref, meta = read_memorization(ref_dir)
    paths = read_frame(run, ["path"])["path"]
    mem = ref.set_index("path").loc[paths, "memorization"].to_numpy()
    ok = np.isfinite(mem)
    curves = pd.read_parquet(run / "epochs.parquet")
    n = len(paths)
    csg, loss, margin = np.zeros(n), np.zeros(n), np.zeros(n)
    last_wrong = np.full(n, -1)
    rows = []
    for rec in read_epochs(run / "trajectories"):
        csg += np.nan_to_num(rec.grad_sq.astype(np.float64))
        loss += np.nan_to_num(rec.loss.astype(np.float64))
        margin += np.nan_to_num(rec.margin.astype(np.float64))
        last_wrong[~rec.correct.astype(bool)] = rec.epoch
        t = rec.epoch
        cols = {"csg": csg, "sgal (loss to t)": loss, "learning_time": last_wrong + 1.0, "-aum": -margin / (t + 1)}
        row = {"epoch": t + 1}
        for name, x in cols.items():
            row[name] = {"pearson": pearson(x[ok], mem[ok]), "spearman": spearman(x[ok], mem[ok]),
                         "cosine": cosine(x[ok], mem[ok])}
        c = curves.iloc[t]
        row.update(weight_norm=float(c["weight_norm"]), grad_mean=float(c["grad_mean"]),
                   train_acc=float(c["train_acc"]), val_loss=float(c["val_loss"]) if "val_loss" in c else None)
        rows.append(row)
    return {"reference": str(ref_dir), "run": str(run), "split_half": meta["split_half"], "samples": int(ok.sum()),
            "epochs": rows}


def category_rules(ref_dir: Path, run: Path, levels=(0.3, 0.5)) -> list[dict]:
    """Candidate rules for the ``memorized`` + ``atypical`` categories (together: high memorization whatever
    the prediction) on a finished run, against reference memorization above each level."""
    from memscan.memorization import flag_precision
    ref, _ = read_memorization(ref_dir)
    df = read_frame(run, ["path", "csg", "sgal", "learning_time", "category", "memorization_score"])
    mem = ref.set_index("path").loc[df["path"], "memorization"].to_numpy()
    ok = np.isfinite(mem)
    l = np.log(np.maximum(df["csg"].to_numpy(), 1e-30))
    q1, q2, q3 = np.percentile(l, [25, 50, 75])
    not_mis = (df["category"] != "mislabeled").to_numpy()
    rules = {"shipped (memorized or atypical)": df["category"].isin(["memorized", "atypical"]).to_numpy(),
             "log CSG > Q3 + 3 (Q3 - median)": (l > q3 + 3 * (q3 - q2)) & not_mis}
    for q in (0.02, 0.05, 0.1):
        rules[f"top {q:.0%} memorization_score"] = df["memorization_score"].to_numpy() > 1 - q
        rules[f"top {q:.0%} sgal"] = percentile(df["sgal"].to_numpy()) > 1 - q
    out = []
    for name, flag in rules.items():
        for lv in levels:
            out.append({"rule": name, **flag_precision(flag[ok], mem[ok], lv)})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("reference", type=Path)
    ap.add_argument("run", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--categories", type=Path, help="a default run of the same data: replay category rules on it")
    a = ap.parse_args()
    res = per_epoch(a.reference, a.run)
    if a.categories is not None:
        res["category_rules"] = category_rules(a.reference, a.categories)
        for r in res["category_rules"]:
            p = "-" if r["precision"] is None else f"{r['precision']:.2f}"
            rc = "-" if r["recall"] is None else f"{r['recall']:.2f}"
            print(f"  {r['rule']:40s} mem > {r['level']}: flagged {r['flagged']:4d}  P {p}  R {rc}  "
                  f"({r['above_level']} above)")
    print(f"reference split-half (Spearman-Brown): {res['split_half']['spearman_full']:.3f}; {res['samples']} samples")
    print(f"{'epoch':>5} {'CSG P/S':>13} {'SGAL P/S':>13} {'LT S':>6} {'-AUM S':>7} {'w-norm':>7} {'grad':>7} {'acc':>6}")
    for r in res["epochs"]:
        print(f"{r['epoch']:>5} {r['csg']['pearson']:6.3f}/{r['csg']['spearman']:.3f} "
              f"{r['sgal (loss to t)']['pearson']:6.3f}/{r['sgal (loss to t)']['spearman']:.3f} "
              f"{r['learning_time']['spearman']:6.3f} {r['-aum']['spearman']:7.3f} {r['weight_norm']:7.2f} "
              f"{r['grad_mean']:7.3f} {r['train_acc']:6.3f}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
