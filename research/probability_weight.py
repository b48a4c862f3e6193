"""How much weight should the stop point's 1 - p(given) carry in `mislabel_score`? (issue 13, point 3)

Replays the shipped score exactly on finished, annealed runs (`memscan.scores.accumulate` over the run's
trajectories with the late window the pipeline uses, `mislabel_statistic`, the report's `p_given`) with the
weight of 1 - p(given) from 0.5 (shipped) to 0.75, and prints each run's AUROC. Arguments as in
`rate_estimators.py`: ``RUN`` (an `eval-noise` seed folder with truth.csv) or ``RUN:CLEAN_MANIFEST``.

    python research/probability_weight.py bench-out/calib/c5k-pair20/seed-0 \\
        bench-out/inst1000/cifar-inst20-1000pc/memscan:bench-out/inst1000/cifar-inst20-1000pc/data/subset.parquet \\
        --json research/results/probability-weight-machineA.json
"""
from __future__ import annotations

import json
from pathlib import Path

from sklearn.metrics import roc_auc_score

from memscan.scores import accumulate, mislabel_statistic, percentile
from memscan.trajectories import read_epochs
from rate_estimators import load, parse_runs

WEIGHTS = (0.5, 0.6, 0.65, 0.7, 0.75)


def main():
    a = parse_runs(__doc__)
    rows = []
    for spec in a.runs:
        df, flipped, meta, _ = load(spec)
        run = Path(spec.partition(":")[0])
        epochs = meta["stop"]["epochs_trained"]
        sig = accumulate(read_epochs(run / "trajectories"), len(df), peak_epoch=None, window_start=epochs // 2)
        traj, p = percentile(mislabel_statistic(sig)), percentile(1 - df["p_given"].to_numpy())
        row = {"run": str(run), "epochs": epochs, "report": round(roc_auc_score(flipped, df["mislabel_score"]), 4)}
        for w in WEIGHTS:
            row[str(w)] = round(roc_auc_score(flipped, percentile((1 - w) * traj + w * p)), 4)
        rows.append(row)
        print(row["run"], row["epochs"], row["report"], *(f"{w}: {row[str(w)]:.4f} ({row[str(w)] - row['0.5']:+.4f})"
                                                          for w in WEIGHTS[1:]))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
