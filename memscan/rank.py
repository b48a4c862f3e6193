"""Ranking the report: arrays in, indices out (cleanlab's ``rank`` style), and the rankings the CLI prints.

Every ranking key has a direction: ``BY[key] = (column, descending)``; descending=True means
higher values are more suspicious. ``ranked_records`` is exactly what ``memscan rank --format
json`` prints.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import records
from .errors import ConfigError, check_choice
from .report import read_frame, read_metadata
from .text import printable
from .scores import CATEGORIES

BY = {
    "mislabel": ("mislabel_score", True),
    "memorization": ("memorization_score", True),
    "atypicality": ("atypicality_score", True),
    "csg": ("csg", True),
    "sgal": ("sgal", True),
    "csl": ("csl", True),
    "aum": ("aum", False),              # low margin = suspicious
    "p_given": ("p_given", False),      # low probability of the given label = suspicious
    "forgetting": ("forgetting", True),
    "learning_time": ("learning_time", True),
    # beyond labels (data_audit): image properties and duplicates
    "blur": ("sharpness", False),       # least sharp first
    "dark": ("brightness", False),
    "bright": ("brightness", True),
    "contrast": ("contrast", False),    # flattest first
    "information": ("entropy", False),  # nearly blank first
    "duplicate": ("duplicate_similarity", True),   # closest duplicates first; images without one left out
}
RECORD_COLUMNS = ("rank", "sample_id", "path", "label_name", "pred_name", "p_pred", "p_given", "score",
                  "category")
EXPLAIN_COLUMNS = ("suggested_label_name", "suggestion_agreement", "reason")   # absent from older reports
AUDIT_KEYS = ("blur", "dark", "bright", "contrast", "information", "duplicate")
AUDIT_EXPLAIN = ("image_issue", "duplicate_of", "duplicate_kind", "duplicate_conflict")   # with an AUDIT_KEYS ranking


def rank_indices(values, /, *, descending: bool = True) -> np.ndarray:
    """Indices that sort ``values`` from most to least suspicious; ties keep sample order."""
    v = np.asarray(values, dtype=np.float64)
    return np.argsort(-v if descending else v, kind="stable")


def needed_columns(by: str = "mislabel") -> list[str]:
    check_choice("--by", by, tuple(BY))
    return [c for c in RECORD_COLUMNS if c not in ("rank", "score")] + ["label_name", BY[by][0]]


def select(df, /, *, by: str = "mislabel", top: int | None = None, category: str | None = None,
           class_name: str | None = None):
    """Rows of the report ranked by ``by``, optionally filtered, with ``rank`` and ``score`` columns. A ranking
    by a data-audit column (``AUDIT_KEYS``) leaves out the samples it has no value for: an image without a
    duplicate is not part of a ranking by duplicates."""
    check_choice("--by", by, tuple(BY))
    if category is not None:
        check_choice("--category", category, CATEGORIES)
    if top is not None and top <= 0:
        raise ConfigError(f"--top {top} must be positive")
    col, desc = BY[by]
    if class_name is not None:
        names = sorted(set(df["label_name"]))
        if class_name not in names:
            raise ConfigError(f"--class {class_name!r} is not a class of this report; classes: "
                              f"{', '.join(map(printable, names))}")
    if by in AUDIT_KEYS:
        df = df[np.isfinite(np.asarray(df[col], dtype=np.float64))]
    order = rank_indices(df[col].to_numpy(), descending=desc)
    out = df.iloc[order].copy()
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out["score"] = out[col]
    if category is not None:
        out = out[out["category"] == category]
    if class_name is not None:
        out = out[out["label_name"] == class_name]
    return out.head(top) if top is not None else out


def ranked_records(path, /, *, by: str = "mislabel", top: int | None = 500, category: str | None = None,
                   class_name: str | None = None) -> list[dict]:
    """The ranking as plain dicts (the ``--format json`` output)."""
    extra = EXPLAIN_COLUMNS + (AUDIT_EXPLAIN if by in AUDIT_KEYS else ())
    df = select(read_frame(path, needed_columns(by), extra), by=by, top=top, category=category,
                class_name=class_name)
    return records(df, RECORD_COLUMNS + tuple(c for c in extra if c in df))


def sample_files(path, /, *, by: str = "mislabel", top: int | None = 500, category: str | None = None,
                 class_name: str | None = None) -> list[str]:
    """The image files of the ranking (the ``--format paths`` output), most suspicious first."""
    ds = read_metadata(path).dataset
    loc = Path(ds.location)
    if ds.source == "parquet-bytes":
        raise ConfigError(f"the images of this report live inside the Parquet file '{printable(loc)}': there are no "
                          "files to list; use --format csv or --format json (the path column names each row)")
    df = select(read_frame(path, needed_columns(by)), by=by, top=top, category=category, class_name=class_name)
    root = loc.parent if loc.is_file() else loc       # a manifest's paths are relative to its folder
    return [str(root / p) for p in df["path"]]


def class_summary(df, /) -> list[dict]:
    """Per class: samples, suspected mislabeled, the class most often predicted instead, mean scores."""
    rows = []
    for name, g in df.groupby("label_name", sort=True):
        wrong = g[g["pred_name"] != name]["pred_name"]
        rows.append({
            "class": name, "samples": int(len(g)),
            "mislabeled": int((g["category"] == "mislabeled").sum()),
            "atypical": int((g["category"] == "atypical").sum()),
            "memorized": int((g["category"] == "memorized").sum()),
            "mislabeled_fraction": float((g["category"] == "mislabeled").mean()),
            "most_predicted_instead": None if wrong.empty else str(wrong.value_counts().index[0]),
            "accuracy": float((g["pred_name"] == name).mean()),
            "mean_mislabel_score": float(g["mislabel_score"].mean()),
            "mean_memorization_score": float(g["memorization_score"].mean()),
        })
    return rows


SUMMARY_COLUMNS = ["label_name", "pred_name", "category", "mislabel_score", "memorization_score"]
HEALTH_COLUMNS = ("label", "confident_class")


def dataset_summary(path, /) -> dict:
    """``rank --summary --json``: ``per_class`` rows (``class_summary``) and, when the report has the label
    indices and confident classes, the dataset's health (``health.dataset_health``: label health, joint and
    noise matrix, overlapping class pairs)."""
    from .health import report_health
    df = read_frame(path, SUMMARY_COLUMNS, HEALTH_COLUMNS)
    out = {"per_class": class_summary(df)}
    if all(c in df for c in HEALTH_COLUMNS):
        out.update(report_health(df, read_metadata(path).dataset.classes))
    return out
