"""Which blend of a run's signals agrees best with reference memorization? (issue 14, item 3)

Replays finished default runs against ``memscan memorization`` references of the same images (matched by
path): each candidate is a mean of percentiles of per-sample signals — SGAL (loss summed to the peak), the
late-window loss and negated mean margin (the statistic behind ``mislabel_score``), learning time, and the
stop point's 1 − p(given) — recomputed from the run's ``trajectories/`` and ``report.parquet`` exactly as
``memscan.scores`` does. Prints Spearman and Pearson (of the percentiles) against each reference, the chosen blend's Spearman gain
over the two shipped columns with a paired-bootstrap 95% interval, and writes JSON.

    python research/memorization_blend.py bench-out/memo5k/ref-c5k:bench-out/memo5k/default-c5k \\
        bench-out/memo/ref-c2k:bench-out/memo/default-c2k ... --json research/results/memorization-blend-machineA.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from memscan.memorization import pearson, spearman
from memscan.memorization_run import read_memorization
from memscan.report import read_frame
from memscan.scores import MEMORIZATION_WEIGHTS, accumulate, mislabel_statistic, percentile
from memscan.trajectories import read_epochs

P = percentile


def blend(one_minus_p, sgal, traj, w_p: float, w_sgal: float) -> np.ndarray:
    """w_p x pct(1 - p) + w_sgal x pct(SGAL) + the rest x pct(trajectory statistic)."""
    return w_p * P(one_minus_p) + w_sgal * P(sgal) + (1 - w_p - w_sgal) * P(traj)


def bootstrap_gain(x, y, mem, rounds: int = 200, seed: int = 0) -> dict:
    """Spearman(x, mem) - Spearman(y, mem) over paired bootstrap resamples of the samples: mean, 95% interval."""
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(rounds):
        i = rng.integers(0, len(mem), len(mem))
        d.append(spearman(x[i], mem[i]) - spearman(y[i], mem[i]))
    lo, hi = np.percentile(d, [2.5, 97.5])
    return {"mean": float(np.mean(d)), "low": float(lo), "high": float(hi)}


def signals(run: Path):
    """The report's columns and the trajectories' late-window totals; SGAL is the report's own (it stops at
    the weight-norm peak when one came)."""
    df = read_frame(run, ["path", "p_given", "sgal", "mislabel_score"])
    sig = accumulate(read_epochs(run / "trajectories"), len(df), peak_epoch=None)
    sig.sgal = df["sgal"].to_numpy(np.float64)
    return df, sig


def grid(df, sig) -> dict:
    """The weight of 1 - p against SGAL's share of the rest (the trajectory statistic takes the remainder)."""
    one_minus_p, traj = 1.0 - df["p_given"].to_numpy(np.float64), mislabel_statistic(sig)
    return {f"1-p {wp}, SGAL {share} of the rest": blend(one_minus_p, sig.sgal, traj, wp, (1 - wp) * share)
            for wp in (0.4, 0.5, 0.6) for share in (0.0, 0.25, 0.5, 0.75)}


def candidates(df, sig) -> dict:
    one_minus_p = 1.0 - df["p_given"].to_numpy(np.float64)
    traj = mislabel_statistic(sig)
    return {
        "0.5 (1-p) + 0.25 SGAL + 0.25 trajectory (chosen)": blend(one_minus_p, sig.sgal, traj,
                                                                  MEMORIZATION_WEIGHTS["1-p_given"],
                                                                  MEMORIZATION_WEIGHTS["sgal"]),
        "SGAL + 1-p (memorization_score before)": P(sig.sgal) + P(one_minus_p),
        "mislabel_score (the run's)": df["mislabel_score"].to_numpy(),
        "SGAL": sig.sgal,
        "1 - p(given)": one_minus_p,
        "late loss": sig.window_loss,
        "-late AUM": -sig.window_aum,
        "trajectory statistic (late loss + -late AUM)": traj,
        "late loss + 1-p": P(sig.window_loss) + P(one_minus_p),
        "-late AUM + 1-p": P(-sig.window_aum) + P(one_minus_p),
        "SGAL + late loss + 1-p (thirds)": P(sig.sgal) + P(sig.window_loss) + P(one_minus_p),
        "SGAL + -late AUM + 1-p (thirds)": P(sig.sgal) + P(-sig.window_aum) + P(one_minus_p),
        "SGAL + -late AUM + 2(1-p)": P(sig.sgal) + P(-sig.window_aum) + 2 * P(one_minus_p),
        "SGAL + late loss + -late AUM + 1-p (quarters)": P(sig.sgal) + P(sig.window_loss) + P(-sig.window_aum) + P(one_minus_p),
        "(SGAL + late loss)/2 + 1-p": (P(sig.sgal) + P(sig.window_loss)) / 2 + P(one_minus_p),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", help="REFERENCE:RUN")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    out = []
    for pair in a.pairs:
        ref_dir, run = (Path(s) for s in pair.split(":"))
        ref, meta = read_memorization(ref_dir)
        df, sig = signals(run)
        mem = ref.set_index("path").loc[df["path"], "memorization"].to_numpy()
        ok = np.isfinite(mem)
        rho = (meta.get("split_half") or {}).get("spearman_full")
        score = lambda columns: {name: {"spearman": spearman(x, mem[ok]), "pearson": pearson(P(x), mem[ok])}
                                 for name, x in columns.items()}
        cols = {k: np.asarray(v, np.float64)[ok] for k, v in candidates(df, sig).items()}
        rows, weights = score(cols), score({k: v[ok] for k, v in grid(df, sig).items()})
        chosen, *others = list(cols)[:3]
        gains = {o: bootstrap_gain(cols[chosen], cols[o], mem[ok]) for o in others}
        print(f"\n{run} against {ref_dir} ({ok.sum()} samples, reliability {rho})")
        for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["spearman"]):
            print(f"  {r['spearman']:.4f}  {r['pearson']:.4f}  {name}")
        for o, g in gains.items():
            print(f"  chosen - {o}: Spearman {g['mean']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]")
        print("  weight grid (Spearman / Pearson):")
        for name, r in weights.items():
            print(f"    {r['spearman']:.4f}  {r['pearson']:.4f}  {name}")
        out.append({"reference": str(ref_dir), "run": str(run), "split_half": meta.get("split_half"),
                    "epochs": sig.epochs, "columns": rows, "chosen_minus": gains, "weight_grid": weights})
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
