"""AUROC of single signals and their combinations at chosen epochs of a stop-signal study folder.

    python research/score_combinations.py bench-out/cifar-sym20 10,16,20,30
"""
import sys

import numpy as np

from memscan.evaluate import detection_metrics
from memscan.scores import accumulate, percentile as P
from memscan.trajectories import read_epochs


def main(folder, epochs):
    ex = np.load(f"{folder}/exact.npz")
    flipped = ex["flipped"]
    recs = list(read_epochs(f"{folder}/traj"))
    for t in epochs:
        if t > len(recs):
            continue
        s = accumulate(recs[:t], len(flipped), peak_epoch=None)
        p_last3 = ex["p_given"][max(0, t - 3):t].mean(0)
        cand = {"-aum": -s.aum, "csl": s.csl, "-aum+csl": P(-s.aum) + P(s.csl),
                "-aum+csl+1-p3": P(-s.aum) + P(s.csl) + P(1 - p_last3), "-aum+csg": P(-s.aum) + P(s.csg),
                "csg": s.csg, "1-p": 1 - ex["p_given"][t - 1], "1-p3": 1 - p_last3}
        print(t, " ".join(f"{k}={detection_metrics(v, flipped)['auroc']:.4f}" for k, v in cand.items()))


if __name__ == "__main__":
    main(sys.argv[1], [int(x) for x in sys.argv[2].split(",")])
