"""report.parquet: one row per sample, with the run's metadata (``ReportMeta``) in the Parquet schema.

Readable as-is by pandas, polars and DuckDB. Schema metadata (``memscan`` key, JSON): format
version, each column's meaning and direction, and ``ReportMeta``: memscan version, config, dataset,
stop and peak epochs, per-epoch curves, timings. ``read_metadata`` is the one way to read it; it
refuses files of an unknown format version or with keys missing.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .data_audit import COLUMNS as AUDIT_COLUMNS
from .errors import ReportError
from .files import is_regular_file, to_jsonable

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
    "mislabel_score": "[0,1] percentile of a weighted mean of the mislabel statistic (mean percentile of the negated "
                      "margin and of the loss, both over the second half of the epochs trained) and the percentile "
                      "of 1 - p_given at the stop point (0.5/0.5 after the annealing epoch, else 0.8/0.2); higher = "
                      "more likely mislabeled",
    "mislabel_rank": "1 = most likely mislabeled",
    "memorization_score": "[0,1] percentile of 0.5 x the percentile of 1-p_given at the stop point, 0.25 x sgal's (loss "
                          "summed to the peak) and 0.25 x the late-window statistic's; higher = more memorized",
    "memorization_rank": "1 = most memorized",
    "atypicality_score": "[0,1] percentile of the mean percentile of csg and 1-p_pred; higher = more atypical",
    "atypicality_rank": "1 = most atypical",
    "confident_class": "class predicted above its confident-learning threshold, -1 if none",
    "category": "mislabeled | atypical | memorized | ok (rules in README: 'Categories')",
    "suggested_label": "suggested class index: the stop point's most probable class (equal to label: keep it)",
    "suggested_label_name": "suggested class name",
    "p_suggested": "probability of the suggested class at the stop point",
    "suggestion_agreement": "fraction of the late-window epochs whose training step predicted the suggested class; "
                            "higher = a steadier verdict (NaN: predictions not recorded)",
    "reason": "why the sample is in its category, from its own training history (empty when 'ok')",
    **AUDIT_COLUMNS,
}


@dataclass
class DatasetInfo:
    location: str                 # the folder or manifest, absolute
    source: str                   # "folder" | "manifest" | "parquet-bytes"
    n: int                        # samples in the report (unreadable images left out)
    classes: list                 # class names; a label is an index into this list
    fingerprint: str              # paths, sizes, mtimes, labels (data.index.SampleTable.fingerprint)
    image_size: int               # pixels, square, as decoded
    skipped: list = field(default_factory=list)   # [{"path", "error"}] images that could not be read
    memory_mapped: bool = False
    ignored_files: int = 0        # non-image files seen in a folder dataset


@dataclass
class StopInfo:
    """Epochs are 1-based here, as in every file memscan writes: epoch 1 is the first trained."""
    reason: str
    epochs_trained: int
    peak_epoch: int | None        # the confirmed peak of the stop curve, None when there was none
    csg_epochs: int               # csg and sgal sum epochs 1..csg_epochs
    mislabel_window: list         # [first, last] epochs behind mislabel_score, inclusive
    nan: bool = False
    anneal_epochs: int = 0        # epochs trained after the stop at a lower rate (anneal_lr), before the
                                  # prediction pass; outside every window above
    anneal_lr: float | None = None


@dataclass
class ReportMeta:
    """A run's metadata: the Parquet schema's ``memscan`` key and the bulk of run.json. Epochs are
    1-based (``StopInfo``); ``curves[k][i]`` is the value of epoch ``i + 1``."""
    memscan_version: str
    config: dict                  # RunConfig.to_dict()
    dataset: DatasetInfo
    stop: StopInfo
    curves: dict                  # per-epoch weight_norm, total_norm, norm_layer_norm, grad_mean, loss_mean,
                                  # train_acc, val_loss, val_acc, lr (None where not measured)
    device: str = "cpu"
    processes: int = 1
    precision: str = "float32"
    channels_last: bool = False
    timings: dict = field(default_factory=dict)      # seconds: decode_s, train_s, score_s, total_s
    categories: dict = field(default_factory=dict)   # samples per category
    stop_accuracy: float | None = None              # accuracy on the given labels at the stop (eval mode)
    warnings: list = field(default_factory=list)     # how far the categories can be trusted (scores.trust_warnings)
    audit: dict = field(default_factory=dict)        # image issues, duplicates, leaks (data_audit.audit_images)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "report") -> "ReportMeta":
        """Validated: a missing or mistyped key is a ``ReportError`` naming ``source``."""
        try:
            nested = {"dataset": DatasetInfo, "stop": StopInfo}
            kw = {k: (nested[k](**_known(nested[k], d[k])) if k in nested else d[k])
                  for k in _known(cls, d)}
            meta = cls(**kw)
        except (TypeError, KeyError, AttributeError) as e:
            raise ReportError(f"'{source}' lacks report metadata ({e}); it was not written by 'memscan run' or "
                              "was edited: re-run 'memscan run'") from None
        bad = _metadata_problem(meta)
        if bad:
            raise ReportError(f"'{source}' has damaged report metadata ({bad}); re-run 'memscan run' to write it again")
        return meta


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _metadata_problem(meta: "ReportMeta") -> str | None:
    """What is mistyped in metadata every reader relies on (None when nothing): readers index class names by
    label, plot the curves and print the warnings."""
    ds = meta.dataset
    if not isinstance(meta.config, dict) or not isinstance(meta.audit, dict):
        return "config/audit"
    if not isinstance(ds.classes, list) or not ds.classes or not all(isinstance(c, str) for c in ds.classes):
        return "dataset.classes is not a list of class names"
    if not isinstance(ds.location, str) or not isinstance(ds.n, int):
        return "dataset.location/n"
    if not isinstance(meta.curves, dict) or not all(
            isinstance(v, list) and all(x is None or _is_number(x) for x in v) for v in meta.curves.values()):
        return "curves are not lists of numbers"
    if not isinstance(meta.warnings, list) or not all(isinstance(w, str) for w in meta.warnings):
        return "warnings are not a list of text"
    if not isinstance(meta.categories, dict) or not isinstance(meta.timings, dict):
        return "categories/timings"
    return None


def _known(cls, d: dict) -> dict:
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__} is not a JSON object")
    return {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}



def build_table(table, labels, sig, scores: dict, meta: ReportMeta) -> pa.Table:
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
    if "suggested_label" in scores:
        cols["suggested_label"] = scores["suggested_label"].astype(np.int32)
        cols["suggested_label_name"] = names[scores["suggested_label"]].tolist()
        cols["p_suggested"] = scores["p_suggested"].astype(np.float32)
        cols["suggestion_agreement"] = scores["suggestion_agreement"].astype(np.float32)
        cols["reason"] = pa.array(scores["reason"].tolist(), pa.string())
    for c in AUDIT_COLUMNS:
        if c in scores:
            v = scores[c]
            cols[c] = pa.array(v.tolist(), pa.string()) if v.dtype == object else v
    t = pa.table(cols)
    fields = [t.schema.field(c).with_metadata({"description": COLUMNS[c]}) for c in t.column_names]
    full = {"format_version": FORMAT_VERSION, "columns": COLUMNS, **meta.to_dict()}
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(full, default=to_jsonable).encode()})
    return t.cast(schema)


def resolve_report_path(path) -> Path:
    from .run_folder import RunFolder
    p = Path(path)
    if p.is_dir():
        p = RunFolder(p).report
    if not p.exists():
        raise ReportError(f"no report at '{p}'; pass a run folder made by 'memscan run' or its report.parquet")
    if not is_regular_file(p):   # a pipe would block the read forever
        raise ReportError(f"'{p}' is not a regular file; pass a report.parquet written by 'memscan run'")
    return p


TEXT_COLUMNS = ("path", "label_name", "pred_name", "suggested_label_name", "category", "reason")
CLASS_COLUMNS = ("label", "pred", "suggested_label")   # indices into the metadata's class names
AUDIT_TEXT_COLUMNS = ("image_issue", "duplicate_kind", "duplicate_of")   # the data audit's other columns are numbers
CORE_COLUMNS = ("path", "label_name", "category")   # what every whole-report reader (report, plot, export) uses


def checked_paths(table, p, classes=None) -> None:
    """The columns every reader relies on have the types memscan writes, or the report is damaged: text where
    text is written (no empty path), numbers where numbers are, scores and ranks without NaN, a known
    category, labels that index ``classes``. Checked once here, where a report is read, instead of failing
    deep inside a reader with a Python error."""
    def damaged(what):
        raise ReportError(f"'{p}' is damaged: {what}; re-run 'memscan run' to write it again")
    names = table.column_names
    for c in TEXT_COLUMNS:
        if c in names:
            col = table.column(c)
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                damaged(f"its {c} column holds values of type {col.type}")
            if col.null_count and c in ("path", "category"):
                damaged(f"its {c} column holds {col.null_count} empty cell(s)")
    for c in names:
        if c in TEXT_COLUMNS or c not in COLUMNS:
            continue
        col = table.column(c)
        if c in AUDIT_TEXT_COLUMNS:
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
                damaged(f"its {c} column holds values of type {col.type}, not text")
            continue
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
            damaged(f"its {c} column holds values of type {col.type}, not numbers")
        if (c.endswith("_score") or c.endswith("_rank")) and (col.null_count or (
                pa.types.is_floating(col.type) and np.isnan(col.to_numpy(zero_copy_only=False)).any())):
            damaged(f"its {c} column has empty or NaN cells")
    if "category" in names:
        from .scores import CATEGORIES
        unknown = set(table.column("category").unique().to_pylist()) - set(CATEGORIES)
        if unknown:
            damaged(f"its category column holds {sorted(map(str, unknown))[:3]}, not one of {', '.join(CATEGORIES)}")
    for c in CLASS_COLUMNS:
        if classes is not None and c in names and len(table):
            v = table.column(c).to_numpy(zero_copy_only=False)
            if pa.types.is_integer(table.column(c).type) and (v.min() < 0 or v.max() >= len(classes)):
                damaged(f"its {c} column holds class indices outside 0..{len(classes) - 1}")


def checked_scores(df, columns, name) -> None:
    """A reader that computes with ``columns`` of a report frame needs them present and finite, and one row per
    path (a row listed twice would count one sample twice): otherwise the report is damaged, in one line."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ReportError(f"'{name}' lacks the report column(s) {', '.join(missing)}; re-run 'memscan run' to write "
                          "a complete report")
    bad = [c for c in columns if not np.isfinite(df[c].to_numpy(np.float64)).all()]
    if bad:
        raise ReportError(f"'{name}' holds non-finite values in {', '.join(bad)}; re-run 'memscan run' to write the "
                          "report again")
    twice = df["path"][df["path"].duplicated()]
    if len(twice):
        raise ReportError(f"'{name}' lists '{twice.iloc[0]}' more than once; re-run 'memscan run' to write the report "
                          "again")


def read_metadata(path) -> ReportMeta:
    p = resolve_report_path(path)
    try:
        md = pq.read_schema(p).metadata or {}
    except Exception as e:
        raise ReportError(f"'{p}' is not a readable Parquet file ({type(e).__name__}); pass a memscan "
                          "report.parquet") from None
    if META_KEY not in md:
        raise ReportError(f"'{p}' is not a memscan report (no memscan metadata); pass a report.parquet "
                          "written by 'memscan run'")
    try:
        raw = json.loads(md[META_KEY])
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        raise ReportError(f"'{p}' has damaged memscan metadata (not a JSON object); re-run 'memscan run' to "
                          "write the report again")
    v = raw.get("format_version")
    if v != FORMAT_VERSION:
        raise ReportError(f"'{p}' has report format version {v}; this memscan reads version {FORMAT_VERSION}: "
                          "re-run 'memscan run' or use the memscan version that wrote it")
    return ReportMeta.from_dict(raw, source=str(p))


def read_frame(report, columns=None, optional=()):
    """The report as a DataFrame; ``columns`` reads only those (a 1.28 M-row report reads in a
    fraction of the time when a ranking needs 8 of its 25 columns), plus those of ``optional`` the
    report has (columns added after older reports were written)."""
    p = resolve_report_path(report)
    meta = read_metadata(p)
    if columns is None:
        return read_report(p).to_pandas()
    names = pq.read_schema(p).names
    columns = list(dict.fromkeys([*columns, *(c for c in optional if c in names)]))
    missing = [c for c in columns if c not in names]
    if missing:
        raise ReportError(f"'{p}' lacks the report column(s) {', '.join(missing)}; re-run 'memscan run' to write a "
                          "complete report")
    t = pq.read_table(p, columns=columns)
    checked_paths(t, p, meta.dataset.classes)
    return t.to_pandas()


def frame_and_name(report, columns=None, optional=()):
    """(DataFrame, name for messages) of a report path, a run folder or an already loaded DataFrame."""
    if hasattr(report, "columns"):
        return report, "<DataFrame>"
    return read_frame(report, columns, optional), str(resolve_report_path(report))


def read_report(path):
    """The report as a pyarrow Table (``.to_pandas()`` for a DataFrame) with its metadata in
    ``table.schema.metadata``; ``read_metadata(path)`` gives that metadata as a dict."""
    meta = read_metadata(path)
    p = resolve_report_path(path)
    try:
        t = pq.read_table(p)
    except Exception as e:
        raise ReportError(f"cannot read '{p}' ({type(e).__name__}); pass a complete report.parquet written by "
                          "'memscan run'") from None
    missing = [c for c in CORE_COLUMNS if c not in t.column_names]
    if missing:
        raise ReportError(f"'{p}' lacks the report column(s) {', '.join(missing)}; re-run 'memscan run' to write a "
                          "complete report")
    checked_paths(t, p, meta.dataset.classes)
    return t
