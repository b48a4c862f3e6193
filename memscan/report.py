"""report.parquet: one row per sample, with the run's metadata in the Parquet schema.

Readable as-is by pandas, polars and DuckDB. Schema metadata (``memscan`` key, JSON): format
version, memscan version, config, stop and peak epochs, per-epoch curves, skipped images and each
column's meaning and direction. ``read_report`` refuses files of an unknown format version.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ReportError
from .files import write_atomic_with

FORMAT_VERSION = 1
META_KEY = b"memscan"

COLUMNS = {
    "sample_id": "position of the sample in sorted-path order (stable for the same dataset)",
    "path": "image path relative to the dataset root (or manifest folder)",
    "label": "given label, class index",
    "label_name": "given label, class name",
    "pred": "predicted class index at the stop point (eval mode, no augmentation)",
    "pred_name": "predicted class name at the stop point",
    "p_pred": "probability of the predicted class at the stop point",
    "p_given": "probability of the given label at the stop point; LOWER = more suspicious",
    "csg": "cumulative sample gradient: sum over epochs up to the peak of ||d loss/d input||^2; "
           "higher = more memorized/atypical",
    "sgal": "sum of the sample's loss over epochs up to the peak; higher = more suspicious",
    "csl": "sum of the sample's loss over all trained epochs; higher = more suspicious",
    "aum": "area under the margin: mean (given-label logit - largest other logit) over epochs; "
           "LOWER = more suspicious (negative: another class usually wins)",
    "forgetting": "forgetting events: epochs where the sample went from correct to wrong; higher = more",
    "learning_time": "epoch after which the sample stays correctly classified (epochs trained if never); "
                     "higher = learned later",
    "mislabel_score": "[0,1] percentile of 0.8 x the mislabel statistic (mean percentile of the negated margin and "
                      "of the loss, both over the second half of the epochs trained) + 0.2 x the percentile of "
                      "1 - p_given at the stop point; higher = more likely mislabeled",
    "mislabel_rank": "1 = most likely mislabeled",
    "memorization_score": "[0,1] percentile of csg; higher = more memorized",
    "memorization_rank": "1 = most memorized",
    "atypicality_score": "[0,1] percentile of the mean percentile of csg and 1-p_pred; higher = more atypical",
    "atypicality_rank": "1 = most atypical",
    "confident_class": "class predicted above its confident-learning threshold, -1 if none",
    "category": "mislabeled | atypical | memorized | ok (rules in README: 'Categories')",
}


def build_table(table, labels, sig, scores: dict, meta: dict) -> pa.Table:
    """``labels``: the labels the model was trained on (``table.labels``, or injected noise)."""
    names = np.array(table.class_names, dtype=object)
    labels = np.asarray(labels)
    cols = {
        "sample_id": np.arange(len(table), dtype=np.int64),
        "path": table.paths,
        "label": labels.astype(np.int32),
        "label_name": names[labels].tolist(),
        "pred": scores["pred"].astype(np.int32),
        "pred_name": names[scores["pred"]].tolist(),
        "p_pred": scores["p_pred"].astype(np.float32),
        "p_given": scores["p_given"].astype(np.float32),
        "csg": sig.csg, "sgal": sig.sgal, "csl": sig.csl,
        "aum": sig.aum.astype(np.float32),
        "forgetting": sig.forgetting.astype(np.int32),
        "learning_time": sig.learning_time.astype(np.int32),
    }
    for k in ("mislabel", "memorization", "atypicality"):
        cols[f"{k}_score"] = scores[f"{k}_score"].astype(np.float64)
        cols[f"{k}_rank"] = scores[f"{k}_rank"].astype(np.int64)
    cols["confident_class"] = scores["confident_class"].astype(np.int32)
    cols["category"] = scores["category"].tolist()
    t = pa.table(cols)
    fields = [t.schema.field(c).with_metadata({"description": COLUMNS[c]}) for c in t.column_names]
    full = {"format_version": FORMAT_VERSION, "columns": COLUMNS, **meta}
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(full, default=_jsonable).encode()})
    return t.cast(schema)


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def write_atomic(table: pa.Table, dest: Path) -> None:
    write_atomic_with(dest, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def resolve_report_path(path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "report.parquet"
    if not p.exists():
        raise ReportError(f"no report at '{p}'; pass a run folder made by 'memscan run' or its report.parquet")
    return p


def read_metadata(path) -> dict:
    p = resolve_report_path(path)
    try:
        md = pq.read_schema(p).metadata or {}
    except Exception as e:
        raise ReportError(f"'{p}' is not a readable Parquet file ({type(e).__name__}); pass a memscan "
                          "report.parquet") from None
    if META_KEY not in md:
        raise ReportError(f"'{p}' is not a memscan report (no memscan metadata); pass a report.parquet "
                          "written by 'memscan run'")
    meta = json.loads(md[META_KEY])
    v = meta.get("format_version")
    if v != FORMAT_VERSION:
        raise ReportError(f"'{p}' has report format version {v}; this memscan reads version {FORMAT_VERSION}: "
                          "re-run 'memscan run' or use the memscan version that wrote it")
    return meta


def read_report(path):
    """The report as a pyarrow Table (``.to_pandas()`` for a DataFrame) with its metadata in
    ``table.schema.metadata``; ``read_metadata(path)`` gives that metadata as a dict."""
    read_metadata(path)
    return pq.read_table(resolve_report_path(path))
