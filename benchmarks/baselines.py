"""memscan against the tools users would otherwise pick, on the same data, model, epochs and seed.

1. memscan as shipped (default stop rule) — mislabel_score, csg, sgal;
2. one full run without early stop — CSL, AUM, forgetting, final 1 - p(given label);
3. cleanlab's standard recipe: K-fold cross-validation with the same training to get out-of-sample
   predicted probabilities, then cleanlab.filter.find_label_issues and
   cleanlab.rank.get_label_quality_scores (needs `pip install -e .[bench]`).

    python benchmarks/baselines.py cifar10 --per-class 1000 --rate 0.2 --kind symmetric --epochs 20 \
        --out bench-out/base-cifar-sym20.json

Writes a JSON with AUROC, AP, precision@k, TPR@5%FPR, wall time and time relative to memscan.
"""
import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from memscan.config import RunConfig
from memscan.crossfit import cross_val_probs, reference_probabilities
from memscan.data import inject_noise, load_index
from memscan.evaluate import detection_metrics, flag_metrics
from memscan.pipeline import run
from memscan.prepare import prepare
from memscan.report import read_report

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def subset_manifest(name, per_class, dest: Path):
    """Write the first ``per_class`` images of each class as a Parquet-bytes manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    t = load_index(DATA / name / "train.parquet")
    keep = np.sort(np.concatenate([np.flatnonzero(t.labels == c)[:per_class] for c in range(t.num_classes)]))
    s = t.subset(keep)
    pq.write_table(pa.table({"path": s.paths, "label_name": [s.class_names[i] for i in s.labels],
                             "image": pa.array(s.image_bytes, pa.binary())}), dest)
    return dest


def metrics(score, truth):
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in detection_metrics(score, truth).items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", choices=["cifar10", "mnist"])
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--kind", default="symmetric")
    ap.add_argument("--epochs", type=int, default=20, help="epochs of the full runs and of each fold")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-cleanlab", action="store_true")
    ap.add_argument("--skip-full", action="store_true", help="skip the run of --epochs epochs without the stop")
    ap.add_argument("--stem", default="auto", choices=["auto", "learned", "whiten"],
                    help="memscan-cnn's first layer on both sides (BENCHMARKS.md §22)")
    ap.add_argument("--weights", help="a prior model both sides fine-tune from (memscan's automatic fine-tuning "
                                      "recipe; cleanlab's fold models start from it too)")
    ap.add_argument("--manifest", type=Path, help="audit this Parquet manifest instead of the first --per-class "
                                                  "images of the dataset's training split")
    ap.add_argument("--out", type=Path, required=True, help="the results JSON (its runs go in the folder of the "
                                                               "same name without .json)")
    a = ap.parse_args()
    if a.out.suffix != ".json":   # checked first: a folder here failed only at the end, after every run
        ap.error(f"--out {a.out} must name the results .json file, e.g. {a.out}.json")
    work = a.out.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    (work / "data").mkdir(exist_ok=True)
    manifest = a.manifest or subset_manifest(a.dataset, a.per_class, work / "data" / "subset.parquet")
    augment = "crop-flip" if a.dataset == "cifar10" else "crop"
    base = RunConfig(augment=augment, seed=a.seed, max_epochs=a.epochs, weights=a.weights, stem=a.stem)
    holder = {}

    def relabel(table):
        probs = None
        if a.kind == "instance":   # the reference model of eval-noise --kind instance, computed once
            if "reference" not in holder:
                paths, p = reference_probabilities(table, base, progress=None)
                holder["reference"] = dict(zip(paths, p))
            probs = np.stack([holder["reference"][q] for q in table.paths])
        holder["noise"] = inject_noise(table.labels, table.num_classes, rate=a.rate, kind=a.kind, seed=a.seed,
                                       probs=probs)
        holder["table"] = table
        return holder["noise"].labels

    run(manifest, base.replace(max_epochs=1, stop="none"), out=work / "warm", overwrite=True, relabel=relabel)
    res = {"dataset": a.dataset, "per_class": a.per_class, "rate": a.rate, "kind": a.kind, "epochs": a.epochs,
           "weights": a.weights, "manifest": None if a.manifest is None else str(a.manifest),
           "seed": a.seed, "stem": base.resolved().stem, "rank_threshold": base.resolved().rank_threshold,
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                                      f"torch {torch.__version__}", "date": str(date.today()), "methods": {}}

    t = time.perf_counter()
    r = run(manifest, base.replace(max_epochs=max(a.epochs, 30)), out=work / "memscan", overwrite=True,
            relabel=relabel)
    wall = time.perf_counter() - t
    truth = holder["noise"].flipped
    df = read_report(r.report_path).to_pandas()
    res["methods"]["memscan (default stop)"] = {
        "seconds": wall, "epochs": r.summary["epochs_trained"], "stop": r.summary["stop_reason"],
        "mislabel_score": metrics(df["mislabel_score"], truth), "csg": metrics(df["csg"], truth),
        "sgal": metrics(df["sgal"], truth),
        "category": flag_metrics(df["category"].to_numpy() == "mislabeled", truth)}

    if not a.skip_full:
        t = time.perf_counter()
        r = run(manifest, base.replace(stop="none"), out=work / "full", overwrite=True, relabel=relabel)
        wall = time.perf_counter() - t
        df = read_report(r.report_path).to_pandas()
        res["methods"][f"full run ({a.epochs} epochs, no stop)"] = {
            "seconds": wall, "epochs": a.epochs, "mislabel_score": metrics(df["mislabel_score"], truth),
            "csl": metrics(df["csl"], truth), "aum": metrics(-df["aum"], truth),
            "forgetting": metrics(df["forgetting"], truth), "1-p_given": metrics(1 - df["p_given"], truth),
            "csg": metrics(df["csg"], truth)}

    if not a.skip_cleanlab:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
        prep = prepare(holder["table"], base.replace(stop="none"), relabel=relabel)
        labels = prep.labels
        t = time.perf_counter()
        probs = cross_val_probs(prep, base.replace(stop="none"), folds=a.folds, seed=a.seed, flip=base.flips)
        issues = find_label_issues(labels, probs)
        quality = get_label_quality_scores(labels, probs)
        wall = time.perf_counter() - t
        res["methods"][f"cleanlab ({a.folds}-fold CV)"] = {
            "seconds": wall, "epochs": a.epochs * a.folds * (a.folds - 1) / a.folds,
            "label_quality": metrics(1 - quality, truth), "find_label_issues": flag_metrics(issues, truth)}
    ref = res["methods"]["memscan (default stop)"]["seconds"]
    for m in res["methods"].values():
        m["time_vs_memscan"] = round(m["seconds"] / ref, 2)
    a.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
