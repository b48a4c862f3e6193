"""How much weight should the stop point's own verdict, 1 - p(given label), get in ``mislabel_score``?

Reads default-stop reports (which hold the trajectory statistic's percentile as it was, and ``p_given``) and
prints the AUROC of (1 - w) x trajectory + w x (1 - p(given)), as percentiles, for several w. Expects the
folders written by ``baselines.py`` and the ``memscan eval-noise`` runs of BENCHMARKS.md §0; run it on reports
written before the blend shipped, or with MISLABEL_WEIGHTS set to (1, 0).

    python research/score_blend.py bench-out/final-cifar-sym10/seed-0:bench-out/base-cifar-sym10:0.1:symmetric:0 ...
"""
import sys
from pathlib import Path

import numpy as np

from memscan.data import inject_noise, load_index
from memscan.evaluate import detection_metrics
from memscan.report import read_report
from memscan.scores import percentile

WEIGHTS = (0.2, 0.33, 0.5, 1.0)


def main():
    deltas = {w: [] for w in WEIGHTS}
    for spec in sys.argv[1:]:
        run, base, rate, kind, seed = spec.split(":")
        t = load_index(Path(base) / "data" / "subset.parquet")
        truth = inject_noise(t.labels, t.num_classes, rate=float(rate), kind=kind, seed=int(seed)).flipped
        df = read_report(Path(run)).to_pandas()
        traj, pg = df["mislabel_score"].to_numpy(), percentile(1 - df["p_given"].to_numpy())
        ref = detection_metrics(traj, truth)["auroc"]
        row = {}
        for w in WEIGHTS:
            row[w] = detection_metrics((1 - w) * traj + w * pg, truth)["auroc"]
            deltas[w].append(row[w] - ref)
        print(run, round(ref, 4), {w: round(v, 4) for w, v in row.items()})
    for w, d in deltas.items():
        print(f"w={w}: mean change {np.mean(d):+.4f}, smallest {np.min(d):+.4f}")


if __name__ == "__main__":
    main()
