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
from .report import checked_scores, read_metadata, read_report
from .run_folder import RunFolder, default_run_path

# score column -> sign that makes "higher = more suspicious"
EVAL_SCORES = {
    "mislabel_score": 1, "csg": 1, "sgal": 1, "csl": 1, "aum": -1, "forgetting": 1,
    "one_minus_p_given": 1, "learning_time": 1, "memorization_score": 1, "atypicality_score": 1,
}


def evaluate_run(report, flipped) -> dict:
    df = read_report(report).to_pandas()
    checked_scores(df, [c for c in EVAL_SCORES if c != "one_minus_p_given"] + ["label", "p_given"], report)
    flipped = np.asarray(flipped, bool)
    df["one_minus_p_given"] = 1 - df["p_given"]
    metrics = {name: detection_metrics(sign * df[name].to_numpy(np.float64), flipped)
               for name, sign in EVAL_SCORES.items()}
    meta = read_metadata(report)
    return {"scores": metrics, "category": flag_metrics(df["category"].to_numpy() == "mislabeled", flipped),
            "n": len(df), "flipped": int(flipped.sum()), "stop": dataclasses.asdict(meta.stop), "timings": meta.timings}


MAX_TRUTH_BYTES = 256 << 20   # a truth file has a short line per image: far more is not one (and /dev/zero never ends)
TRUE_VALUES, FALSE_VALUES = ("1", "true", "yes"), ("0", "false", "no")


def read_truth(truth_file, paths, labels=None, class_names=None) -> np.ndarray:
    """Flip mask aligned with ``paths`` from a CSV with a ``path`` column and either ``flipped``
    (1/true/yes = the given label is wrong, 0/false/no = right) or ``true_label`` (class index or name).
    Every problem is one ``DatasetError`` naming the file, the row and the fix."""
    import csv
    import io
    from .errors import DatasetError
    from .files import is_regular_file
    p = Path(truth_file)
    if not is_regular_file(p):
        raise DatasetError(f"truth file '{p}' does not exist or is not a regular file; pass the truth.csv that "
                           "eval-noise wrote, or a CSV with path,flipped")
    if p.stat().st_size > MAX_TRUTH_BYTES:
        raise DatasetError(f"truth file '{p}' is over {MAX_TRUTH_BYTES >> 20} MiB; it cannot be a truth file")
    try:
        text = p.read_bytes().decode("utf-8-sig")   # a byte-order mark, as spreadsheets write it, is not a column
    except OSError as e:
        raise DatasetError(f"cannot read truth file '{p}' ({e.strerror}); pass a CSV file") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"truth file '{p}' is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as e:   # e.g. a field over the csv module's 128 KiB limit
        raise DatasetError(f"truth file '{p}' is not readable CSV near row {reader.line_num + 1} ({e})") from None
    cols = set(reader.fieldnames or ())
    if "path" not in cols or not ({"flipped", "true_label"} & cols):
        raise DatasetError(f"truth file '{p}' needs a 'path' column and a 'flipped' or 'true_label' column")
    column = "flipped" if "flipped" in cols else "true_label"
    by_path: dict[str, str] = {}
    for row, r in enumerate(rows, start=2):
        path, value = r.get("path"), r.get(column)
        if not isinstance(path, str) or not isinstance(value, str) or not value.strip():
            raise DatasetError(f"truth file '{p}' row {row} has no {column}; every row needs path and {column}")
        if path in by_path:
            raise DatasetError(f"truth file '{p}' row {row} names '{path}' again; keep one row per image")
        by_path[path] = value.strip()
    missing = [q for q in paths if q not in by_path]
    if missing:
        raise DatasetError(f"truth file '{p}' has no row for '{missing[0]}' ({len(missing)} of the "
                           f"{len(paths)} dataset paths missing); its paths must be the report's relative paths")
    values = [by_path[q] for q in paths]
    if column == "flipped":
        bad = next((v for v in values if v.lower() not in TRUE_VALUES + FALSE_VALUES), None)
        if bad is not None:
            raise DatasetError(f"truth file '{p}': flipped value {bad[:40]!r} is neither 1/true/yes nor 0/false/no")
        return np.array([v.lower() in TRUE_VALUES for v in values], bool)
    names = {n: i for i, n in enumerate(class_names or [])}
    k = len(class_names or [])
    true = []
    for v in values:
        i = names[v] if v in names else int(v) if v.lstrip("-").isdigit() else None
        if i is None or (k and not 0 <= i < k):
            raise DatasetError(f"truth file '{p}': true_label {v[:40]!r} is not a class index (0..{k - 1}) or name "
                               f"({', '.join(class_names or [])})")
        true.append(i)
    return np.array(true) != np.asarray(labels)


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
    if kind != "matrix" and int(round(rate * len(table))) >= len(table):
        raise ConfigError(f"--rate {rate} flips every one of the {len(table)} labels; detection needs clean samples "
                          "too: use a lower rate")
    matrix = None
    if matrix_file is not None:   # a bad matrix is refused before any folder or training, and read once
        matrix = load_matrix(matrix_file, table.num_classes)
        if np.allclose(np.diag(matrix), 0):
            raise ConfigError(f"transition matrix '{matrix_file}' has a zero diagonal: it flips every label; "
                              "detection needs clean samples too")
    if len(set(seeds)) != len(list(seeds)):
        raise ConfigError(f"--seeds {','.join(map(str, seeds))} repeats a seed; each seed is one noise draw and run")
    folder = RunFolder.start(out if out is not None else default_run_path(dataset, suffix="-eval"),
                             guard=DatasetGuard.for_table(table), overwrite=overwrite, kind="eval-noise")
    with folder:
        folder.begun = True
        folder.reset(kind="eval-noise")
        reference = _reference(table, cfg, folder, cache_dir, progress) if kind == "instance" else None
        per_seed = [_one_seed(dataset, cfg, folder, seed, rate=rate, kind=kind, matrix=matrix,
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


def _one_seed(dataset, cfg, folder, seed, *, rate, kind, matrix, overwrite, cache_dir, progress, encoding,
              reference=None):
    holder = {}

    def relabel(table):
        probs = None if reference is None else np.stack([reference[p] for p in table.paths])
        noisy = inject_noise(table.labels, table.num_classes, rate=rate, kind=kind, seed=seed, matrix=matrix, probs=probs)
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
