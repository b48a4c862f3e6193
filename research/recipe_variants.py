"""Does a recipe change help the default run rank §0's label errors? (issue 13, point 3; BENCHMARKS.md §25)

Each CONFIG is a noisy manifest written by ``research/noisy_manifest.py`` from a §0 benchmark run
(``DATA/CONFIG.parquet`` and ``DATA/CONFIG-truth.csv``), so every variant audits exactly §0's noise. Each
variant is the default ``RunConfig`` with the given fields changed (``name:field=value,...``; ``base:`` is the
default itself), run through ``memscan.pipeline.run`` and scored as ``memscan eval-noise --from-run RUN
--truth TRUTH`` scores it.

    python research/recipe_variants.py bench-out/s17/ls bench-out/s18/aug inst20-500pc,pair20-500pc \\
        --variant base: --variant crop:augment=crop --json research/results/recipe-variants-machineC.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from memscan.config import RunConfig
from memscan.eval_noise import evaluate_report_with_truth
from memscan.pipeline import run
from memscan.report import read_metadata


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(":")
    changes = {}
    for kv in filter(None, spec.split(",")):
        k, _, v = kv.partition("=")
        t = str(RunConfig.__dataclass_fields__[k].type)
        changes[k] = (float(v) if "float" in t else int(v) if "int" in t
                      else v.lower() == "true" if "bool" in t else v)
    return name, changes


def run_variant(data: Path, config: str, out: Path, cfg: RunConfig) -> dict:
    """Run ``cfg`` on ``data/CONFIG.parquet`` into ``out`` (kept when it has a report) and score it against
    ``data/CONFIG-truth.csv``: epochs, seconds (None for a kept run), AUROC, AP and the category's figures."""
    t0 = time.perf_counter()
    kept = (out / "report.parquet").exists()
    if not kept:
        run(data / f"{config}.parquet", cfg, out=out, overwrite=out.exists())
    d = evaluate_report_with_truth(out, data / f"{config}-truth.csv")
    m = d["scores"]["mislabel_score"]
    return {"epochs": read_metadata(out).stop.epochs_trained,
            "seconds": None if kept else round(time.perf_counter() - t0, 1),
            "auroc": round(m["auroc"], 4), "ap": round(m["ap"], 4), "category": d.get("category")}


def run_grid(configs, variants, run_one, json_path: Path | None = None) -> list[dict]:
    """``run_one(config, variant) -> row`` for every config and variant; each row printed as it comes and the
    JSON rewritten after each one, so that an interrupted grid keeps what it finished."""
    results = []
    for c in configs:
        for v in variants:
            results.append(run_one(c, v))
            print(json.dumps(results[-1]), flush=True)
            if json_path:
                json_path.write_text(json.dumps(results, indent=1) + "\n")
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path, help="folder of CONFIG.parquet and CONFIG-truth.csv")
    ap.add_argument("out", type=Path, help="folder for the runs")
    ap.add_argument("configs")
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    run_grid(a.configs.split(","), [parse_variant(v) for v in a.variant],
             lambda c, v: {"config": c, "variant": v[0], "changes": v[1]}
             | run_variant(a.data, c, a.out / f"{c}-{v[0]}", RunConfig(**v[1])), a.json)


if __name__ == "__main__":
    main()
