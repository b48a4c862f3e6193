"""Does a training recipe reach a given detection AUROC in fewer epochs? (issue #3: the 1/10 target)

Trains each variant for ``--epochs`` with ``--stop none`` on the same noisy subset and seed, and
prints the AUROC of the shipped ``mislabel_score`` had the run stopped after each epoch (exact: a
stopped run is the prefix of the full run), plus the epoch time.

    python research/recipe_study.py cifar10 --per-class 500 --rate 0.4 --epochs 10 \
        --variant base: --variant ls2:label_smoothing=0.2 --variant lr2:lr=0.2 --out bench-out/recipe-sym40
"""
import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.baselines import subset_manifest
from memscan.config import RunConfig
from memscan.data import inject_noise, load_index
from memscan.eval_noise import eval_noise
from memscan.evaluate import detection_metrics
from memscan.report import read_metadata
from memscan.scores import accumulate, mislabel_statistic, percentile
from memscan.trajectories import read_epochs


def parse_variant(text):
    name, _, spec = text.partition(":")
    changes = {}
    for kv in filter(None, spec.split(",")):
        k, v = kv.split("=")
        field = RunConfig.__dataclass_fields__[k]
        t = field.type if isinstance(field.type, type) else str(field.type)
        changes[k] = (float(v) if "float" in str(t) else int(v) if "int" in str(t)
                      else v.lower() == "true" if "bool" in str(t) else v)
    return name, changes


def auroc_by_epoch(run_dir: Path, truth) -> list[float]:
    recs = list(read_epochs(run_dir / "trajectories"))
    return [round(detection_metrics(percentile(mislabel_statistic(accumulate(recs[:e], len(truth), peak_epoch=None))),
                                    truth)["auroc"], 4) for e in range(1, len(recs) + 1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", choices=["cifar10", "mnist"])
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--rate", type=float, default=0.4)
    ap.add_argument("--kind", default="symmetric")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--variant", action="append", required=True, help="name:key=value,... (RunConfig fields)")
    ap.add_argument("--seeds", default="0", help="comma-separated; each seed draws its own noise and training")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    (a.out / "data").mkdir(parents=True, exist_ok=True)
    subset = a.out / "data" / "subset.parquet"
    if not subset.exists():
        subset_manifest(a.dataset, a.per_class, subset)
    table = load_index(subset)
    seeds = [int(s) for s in a.seeds.split(",")]
    truth = {s: inject_noise(table.labels, table.num_classes, rate=a.rate, kind=a.kind, seed=s).flipped for s in seeds}
    results = {}
    for text in a.variant:
        name, changes = parse_variant(text)
        cfg = RunConfig(stop="none", max_epochs=a.epochs).replace(**changes)
        eval_noise(subset, cfg, rate=a.rate, kind=a.kind, seeds=seeds, out=a.out / name, overwrite=True,
                   cache_dir=a.out / "cache")
        runs = {s: a.out / name / f"seed-{s}" for s in seeds}
        curves = np.array([auroc_by_epoch(runs[s], truth[s]) for s in seeds])
        metas = [read_metadata(r) for r in runs.values()]
        results[name] = {"changes": changes, "auroc_by_epoch": curves.mean(0).round(4).tolist(),
                         "per_seed": curves.tolist(),
                         "epoch_s": round(np.mean([m.timings["train_s"] for m in metas]) / a.epochs, 2),
                         "total_s": round(np.mean([m.timings["total_s"] for m in metas]), 1)}
        print(json.dumps({name: results[name]}), flush=True)
    (a.out / "recipe.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
