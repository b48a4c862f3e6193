"""Does label smoothing help the default run rank human-like label errors? (issue 13, point 3; BENCHMARKS.md §24)

Each CONFIG is a noisy manifest written by ``research/noisy_manifest.py`` from a §0 benchmark run
(``DIR/CONFIG.parquet`` and ``DIR/CONFIG-truth.csv``), so every variant audits exactly §0's noise. Each is run
with the default recipe and ``RunConfig(label_smoothing=LS)`` (not a CLI option), then scored as
``memscan eval-noise --from-run RUN --truth TRUTH`` scores it.

    python research/label_smoothing.py bench-out/s17/ls inst20-500pc,pair20-500pc,... --ls 0,0.1,0.2 \\
        --json research/results/label-smoothing-machineC.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

import sys

sys.path.insert(0, str(Path(__file__).parent))
from recipe_variants import run_grid, run_variant  # noqa: E402  (the sibling study's runner)

from memscan.config import RunConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("configs")
    ap.add_argument("--ls", default="0,0.1,0.2")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    def one(c, ls):
        row = run_variant(a.dir, c, a.dir / f"{c}-ls{ls:g}", RunConfig(label_smoothing=ls))
        return {"config": c, "label_smoothing": ls} | {k: v for k, v in row.items() if k != "seconds"}
    run_grid(a.configs.split(","), [float(v) for v in a.ls.split(",")], one, a.json)


if __name__ == "__main__":
    main()
