"""How precise can a `memorized` flag be against a Feldman & Zhang reference? (issue 14, the precision goal)

Two measurements, no retraining:

1. **The reference against itself.** From a ``memscan memorization`` folder's model files: the top-k of an
   estimate made from S models (S = 2 ... K/2, drawn at random, ten draws), scored against the estimate of K/2
   *other* models above each level. This is what a dedicated estimator of S models reaches against a noisy
   reference, and so roughly what any single-run proxy could hope for (a run is one "in" model and no "out").
2. **Single-run candidates, epoch by epoch.** On a long run of the same dataset (``memscan run --stop none
   --max-epochs E``), for each epoch T: the top-k samples by the loss summed to T among those fitted at T
   (correct in the last two epochs), by the last epoch each was wrong (learned late) among the fitted, by the
   rise of p(given) from the first half of the epochs to the last two ("p_in - p_early"), and by the loss
   summed to T alone. Each against the full reference above each level.

    python research/memorized_ceiling.py bench-out/memo5k/ref-c5k bench-out/memo5k/long-c5k \\
        --json research/results/memorized-ceiling-cifar10-5k-machineA.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from memscan.memorization import estimate
from memscan.memorization_run import _model_outputs, read_memorization
from memscan.report import read_frame
from memscan.trajectories import read_epochs

LEVELS = (0.3, 0.5)
TOPS = (25, 50, 100, 200)


def precision_of_top(score, ref, k, level, eligible=None):
    s = np.where(np.isfinite(score) & np.isfinite(ref), score, -np.inf)
    if eligible is not None:
        s = np.where(eligible, s, -np.inf)
    top = np.argsort(-s, kind="stable")[:k]
    top = top[np.isfinite(s[top])]
    return float((ref[top] > level).mean()) if len(top) else None


def reference_against_itself(ref_dir: Path, sizes, draws: int = 10, seed: int = 0) -> list[dict]:
    ref, _ = read_memorization(ref_dir)
    in_mask, p = _model_outputs(ref_dir, ref["path"])
    k_all = len(in_mask)
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        acc = {(k, lv): [] for k in TOPS for lv in LEVELS}
        for _ in range(draws):
            perm = rng.permutation(k_all)
            a, b = perm[:size], perm[k_all // 2:]   # b: always the same number of models (K/2), never in a
            est_a = estimate(in_mask[a], p[a])["memorization"]
            est_b = estimate(in_mask[b], p[b])["memorization"]
            for k in TOPS:
                for lv in LEVELS:
                    acc[k, lv].append(precision_of_top(est_a, est_b, k, lv))
        rows.append({"models": int(size), "against_models": k_all - k_all // 2,
                     **{f"top{k}_P>{lv}": round(float(np.mean(v)), 3) for (k, lv), v in acc.items()}})
    return rows


def single_run(ref_dir: Path, run: Path, epochs) -> list[dict]:
    ref, _ = read_memorization(ref_dir)
    paths = read_frame(run, ["path"])["path"]
    mem = ref.set_index("path").loc[paths, "memorization"].to_numpy()
    recs = list(read_epochs(run / "trajectories"))
    loss = np.stack([r.loss for r in recs]).astype(np.float64)
    correct = np.stack([r.correct for r in recs]).astype(bool)
    rows = []
    for t in epochs:
        if t > len(recs):
            continue
        l, c = loss[:t], correct[:t]
        fitted = c[-1] & c[-2]
        cum = l.sum(0)
        wrong = ~c
        last_wrong = np.where(wrong.any(0), t - 1 - np.argmax(wrong[::-1], 0), -1)
        p = np.exp(-l)
        rise = p[-2:].mean(0) - p[:max(1, t // 2)].mean(0)
        cands = {"loss to T, fitted": (cum, fitted), "learned late, fitted": (last_wrong + cum / cum.max(), fitted),
                 "p_in - p_early": (rise, None), "loss to T": (cum, None)}
        row = {"epoch": t, "train_acc": round(float(c[-1].mean()), 3), "fitted": int(fitted.sum())}
        for name, (score, elig) in cands.items():
            for k in (50, 100, 200):
                for lv in LEVELS:
                    v = precision_of_top(score, mem, k, lv, elig)
                    row[f"{name} top{k} P>{lv}"] = None if v is None else round(v, 3)
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference", type=Path)
    ap.add_argument("run", type=Path, nargs="?", help="a long run of the same dataset (--stop none)")
    ap.add_argument("--sizes", default="2,4,8,16")
    ap.add_argument("--epochs", default="7,10,15,20,25,30")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    ref, meta = read_memorization(a.reference)
    mem = ref["memorization"].to_numpy()
    out = {"reference": str(a.reference), "models": meta["models"], "split_half": meta["split_half"],
           "base_rate": {str(lv): round(float(np.nanmean(mem > lv)), 4) for lv in LEVELS},
           "reference_against_itself": reference_against_itself(a.reference, [int(s) for s in a.sizes.split(",")])}
    if a.run is not None:
        out["run"] = str(a.run)
        out["single_run"] = single_run(a.reference, a.run, [int(e) for e in a.epochs.split(",")])
    for row in out["reference_against_itself"]:
        print(f"{row['models']:>3} models, top 50: P(> 0.5) {row['top50_P>0.5']:.2f}, P(> 0.3) {row['top50_P>0.3']:.2f}")
    for row in out.get("single_run", []):
        best = max((v, k) for k, v in row.items() if k.endswith("P>0.5") and v is not None)
        print(f"epoch {row['epoch']:>2}: best single-run candidate {best[1]} = {best[0]:.2f}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
