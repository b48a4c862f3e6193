"""Measured detection against known label noise: inject noise in memory, run, score every signal.

``evaluate_run(report, flipped)`` scores an existing report against a truth mask;
``eval_noise(dataset, cfg, rate=..., kind=..., seeds=...)`` injects noise (the dataset on disk is
never touched), runs the pipeline once per seed and aggregates mean and std. The returned dict is
what ``memscan eval-noise --json`` prints and what ``eval.json`` holds.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .config import RunConfig
from .crossfit import reference_probabilities
from .data import load_index
from .data.noise import inject_noise, load_matrix
from .dataset_guard import DatasetGuard
from .errors import ConfigError
from .evaluate import detection_metrics, flag_metrics
from .files import write_json_atomic, write_text_atomic
from .pipeline import run
from .report import read_metadata, read_report
from .run_folder import RunFolder, default_run_path

# score column -> sign that makes "higher = more suspicious"
EVAL_SCORES = {
    "mislabel_score": 1, "csg": 1, "sgal": 1, "csl": 1, "aum": -1, "forgetting": 1,
    "one_minus_p_given": 1, "learning_time": 1, "memorization_score": 1, "atypicality_score": 1,
}


def evaluate_run(report, flipped) -> dict:
    df = read_report(report).to_pandas()
    flipped = np.asarray(flipped, bool)
    df["one_minus_p_given"] = 1 - df["p_given"]
    metrics = {name: detection_metrics(sign * df[name].to_numpy(np.float64), flipped)
               for name, sign in EVAL_SCORES.items()}
    meta = read_metadata(report)
    return {"scores": metrics, "category": flag_metrics(df["category"].to_numpy() == "mislabeled", flipped),
            "n": len(df), "flipped": int(flipped.sum()), "stop": dataclasses.asdict(meta.stop), "timings": meta.timings}


def read_truth(truth_file, paths, labels=None, class_names=None) -> np.ndarray:
    """Flip mask aligned with ``paths`` from a CSV with a ``path`` column and either ``flipped``
    (1/true = the given label is wrong) or ``true_label`` (class index or name)."""
    import csv
    from .errors import DatasetError
    try:
        with open(truth_file, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DatasetError(f"cannot read truth file '{truth_file}' ({e.strerror}); pass a CSV file") from None
    cols = set(rows[0]) if rows else set()
    if "path" not in cols or not ({"flipped", "true_label"} & cols):
        raise DatasetError(f"truth file '{truth_file}' needs a 'path' column and a 'flipped' or 'true_label' "
                           "column")
    by_path = {r["path"]: r for r in rows}
    missing = [p for p in paths if p not in by_path]
    if missing:
        raise DatasetError(f"truth file '{truth_file}' has no row for '{missing[0]}' ({len(missing)} of the "
                           f"{len(paths)} dataset paths missing); its paths must be the report's relative paths")
    if "flipped" in cols:
        return np.array([by_path[p]["flipped"].strip().lower() in ("1", "true", "yes") for p in paths], bool)
    names = {n: i for i, n in enumerate(class_names or [])}
    def idx(v):
        v = v.strip()
        return names[v] if v in names else int(v)
    try:
        true = np.array([idx(by_path[p]["true_label"]) for p in paths])
    except ValueError:
        raise DatasetError(f"truth file '{truth_file}': true_label values must be class indices or names "
                           f"({', '.join(class_names or [])})") from None
    return true != np.asarray(labels)


def evaluate_report_with_truth(report, truth_file) -> dict:
    df = read_report(report).to_pandas()
    meta = read_metadata(report)
    flipped = read_truth(truth_file, df["path"].tolist(), df["label"].to_numpy(), meta.dataset.classes)
    if flipped.all() or not flipped.any():
        from .errors import DatasetError
        raise DatasetError(f"truth file '{truth_file}' marks {'all' if flipped.all() else 'no'} samples as wrong; "
                           "detection needs both")
    return evaluate_run(report, flipped)


def parse_kind(kind: str):
    """'symmetric' | 'pairflip' | 'matrix:FILE' -> (kind, matrix file or None)."""
    if kind.startswith("matrix:"):
        return "matrix", Path(kind.split(":", 1)[1])
    return kind, None


def aggregate(per_seed: list[dict]) -> dict:
    """Mean and std over seeds of every number in the per-seed results."""
    def walk(items):
        first = items[0]
        if isinstance(first, dict):
            return {k: walk([it[k] for it in items]) for k in first if all(k in it for it in items)}
        if isinstance(first, (int, float)) and not isinstance(first, bool) and all(
                isinstance(v, (int, float)) and v is not None for v in items):
            a = np.array(items, dtype=np.float64)
            return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}
        return first
    return {"scores": walk([r["scores"] for r in per_seed]), "category": walk([r["category"] for r in per_seed])}


def eval_noise(dataset, cfg: RunConfig | None = None, *, rate: float = 0.2, kind: str = "symmetric",
               seeds=(0,), out=None, overwrite: bool = False, cache_dir=None, progress=None,
               encoding: str | None = None) -> dict:
    """Inject noise per seed, run, and score the detection. ``out`` holds one run folder per seed
    (``seed-N``) and the aggregated ``eval.json``; it is a memscan folder like a run's."""
    cfg = cfg or RunConfig()
    kind, matrix_file = parse_kind(kind)
    table = load_index(dataset, encoding=encoding)
    if kind != "matrix" and int(round(rate * len(table))) < 1:   # fail now, not after training
        raise ConfigError(f"--rate {rate} flips no label among the {len(table)} samples (round(rate x N) = 0); "
                          f"use a rate of at least {0.5 / len(table):.2g}")
    folder = RunFolder.start(out if out is not None else default_run_path(dataset, suffix="-eval"),
                             guard=DatasetGuard.for_table(table), overwrite=overwrite, kind="eval-noise")
    with folder:
        folder.begun = True
        folder.reset(kind="eval-noise")
        reference = _reference(table, cfg, folder, cache_dir, progress) if kind == "instance" else None
        per_seed = [_one_seed(dataset, cfg, folder, seed, rate=rate, kind=kind, matrix_file=matrix_file,
                              overwrite=overwrite, cache_dir=cache_dir, progress=progress, encoding=encoding,
                              reference=reference)
                    for seed in seeds]
        result = {"dataset": str(dataset), "kind": kind, "rate": rate, "seeds": list(seeds),
                  "actual_rate": [r["actual_rate"] for r in per_seed], "per_seed": per_seed, **aggregate(per_seed)}
        write_json_atomic(folder.eval_json, result)
    return result


def _reference(table, cfg, folder, cache_dir, progress) -> dict:
    """The instance-noise reference model's out-of-sample probabilities, by path; also written to
    ``reference.parquet`` in the eval folder (path, class probabilities) for inspection."""
    import pyarrow as pa
    paths, probs = reference_probabilities(table, cfg, cache_dir=cache_dir, progress=progress)
    folder.write_table(pa.table({"path": paths, "probs": pa.array(list(probs), pa.list_(pa.float32()))}),
                       folder.reference)
    return {p: row for p, row in zip(paths, probs)}


def _one_seed(dataset, cfg, folder, seed, *, rate, kind, matrix_file, overwrite, cache_dir, progress, encoding,
              reference=None):
    holder = {}

    def relabel(table):
        m = load_matrix(matrix_file, table.num_classes) if matrix_file else None
        probs = None if reference is None else np.stack([reference[p] for p in table.paths])
        noisy = inject_noise(table.labels, table.num_classes, rate=rate, kind=kind, seed=seed, matrix=m, probs=probs)
        if not noisy.flipped.any():
            raise ConfigError(f"--kind {kind} at --rate {rate} flipped no label; use a higher rate")
        holder["noise"] = noisy
        return noisy.labels

    res = run(dataset, cfg.replace(seed=seed), out=folder.path / f"seed-{seed}", overwrite=overwrite,
              cache_dir=cache_dir, relabel=relabel, progress=progress, encoding=encoding)
    noisy = holder["noise"]
    r = evaluate_run(res.report_path, noisy.flipped)
    r.update(seed=seed, run=str(res.out_dir), actual_rate=noisy.actual_rate)
    seed_folder = RunFolder(res.out_dir)
    _save_truth(seed_folder.truth, res, noisy)
    write_json_atomic(seed_folder.eval_json, r)
    return r


def _save_truth(path: Path, res, noisy):
    import csv
    import io
    df = read_report(res.report_path).to_pandas()
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "flipped", "noisy_label"])
    for p, fl, lab in zip(df["path"], noisy.flipped, noisy.labels):
        w.writerow([p, int(fl), int(lab)])
    write_text_atomic(path, buf.getvalue())
