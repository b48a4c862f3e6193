"""mislabel statistic over all epochs vs over the late window (the second half), per stop epoch.

    python research/score_window.py bench-out/base-cifar-sym20 --rate 0.2          # baselines.py layout
    python research/score_window.py bench-out/cifar-sym20                            # stop_signal_study layout

Exact: stopping a run at epoch e gives the first e epochs of its full run with the same seed.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from memscan.evaluate import detection_metrics
from memscan.scores import accumulate, mislabel_statistic, percentile
from memscan.trajectories import read_epochs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--rate", type=float)
    ap.add_argument("--kind", default="symmetric")
    ap.add_argument("--epochs", default="5,6,7,8,10,14,20")
    a = ap.parse_args()
    if (a.folder / "exact.npz").exists():
        truth = np.load(a.folder / "exact.npz")["flipped"]
        recs = list(read_epochs(a.folder / "traj"))
    else:
        from memscan.data import inject_noise, load_index
        t = load_index(a.folder / "data" / "subset.parquet")
        truth = inject_noise(t.labels, t.num_classes, rate=a.rate, kind=a.kind, seed=0).flipped
        recs = list(read_epochs(a.folder / "full" / "trajectories"))
    n = len(truth)
    rows = []
    for e in (int(x) for x in a.epochs.split(",")):
        if e > len(recs):
            continue
        auc = lambda w: round(detection_metrics(
            percentile(mislabel_statistic(accumulate(recs[:e], n, peak_epoch=None, window_start=w))), truth)["auroc"], 4)
        rows.append({"epoch": e, "all_epochs": auc(0), "late_half": auc(e // 2)})
    print(json.dumps({"folder": str(a.folder), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
