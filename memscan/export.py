"""The suspects of a report in the formats labelling tools import.

``label_studio_tasks``: Label Studio's task JSON (a list of ``{"data": ..., "predictions": [...]}``), one
task per suspect with memscan's suggested label as a pre-annotation (a ``choices`` result) so a labeller
confirms or corrects it, and memscan's evidence in the task data (shown as Data Manager columns). The image
URL comes from a template: by default Label Studio's local-files URL with the path relative to the dataset
root (start Label Studio with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` set to that folder); ``{path}`` is the report's path, URL-quoted.
``suspects_csv``: the same rows as CSV for spreadsheets and scripts.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from urllib.parse import quote

from .errors import ConfigError
from .files import plain
from .text import spreadsheet_safe

FORMATS = ("label-studio", "csv")
DEFAULT_IMAGE_URL = "/data/local-files/?d={path}"
LABEL_STUDIO_SIGNATURE = b'[{"data": {"memscan": '   # first bytes of an export file: the one kind --out replaces
CSV_SIGNATURE = b"memscan_rank,"
FIELDS = ("path", "label_name", "suggested_label_name", "suggestion_agreement", "p_suggested", "mislabel_score",
          "category", "reason")


def suspects(report, *, category=None, top=None):
    """(DataFrame of the rows to export, most suspicious first, with a 1-based ``memscan_rank``; the report's
    metadata). Default: every sample not in category "ok"."""
    from .rank import select
    from .report import read_frame, read_metadata
    from .scores import CATEGORIES
    meta = read_metadata(report)
    df = read_frame(report, ["path", "label_name", "pred_name", "p_pred", "mislabel_score", "category"],
                    ("suggested_label_name", "suggestion_agreement", "p_suggested", "reason"))
    for col, src in (("suggested_label_name", "pred_name"), ("p_suggested", "p_pred")):
        if col not in df:    # reports written before suggestions: the stop point's class is the suggestion
            df[col] = df[src]
    for col in ("suggestion_agreement", "reason"):
        if col not in df:
            df[col] = None
    if category is not None and category not in CATEGORIES:
        raise ConfigError(f"--category {category!r} is not valid; choose one of: {', '.join(CATEGORIES)}")
    rows = select(df, by="mislabel", top=None, category=category)
    if category is None:
        rows = rows[rows["category"] != "ok"]
    if top is not None:
        if top <= 0:
            raise ConfigError(f"--top {top} must be positive")
        rows = rows.head(top)
    rows = rows.assign(memscan_rank=rows["rank"])
    return rows, meta


def label_studio_tasks(report, *, category=None, top=None, image_url: str = DEFAULT_IMAGE_URL,
                       from_name: str = "label", to_name: str = "image") -> list[dict]:
    """Label Studio tasks; ``from_name``/``to_name``: the names of the ``<Choices>`` and ``<Image>`` tags of
    the project's labelling config (README shows a config that matches the defaults)."""
    if "{path}" not in image_url:
        raise ConfigError(f"--image-url {image_url!r} must contain {{path}} (where the sample's path goes), e.g. "
                          f"{DEFAULT_IMAGE_URL}")
    rows, meta = suspects(report, category=category, top=top)
    if meta.dataset.source == "parquet-bytes" and image_url == DEFAULT_IMAGE_URL:
        raise ConfigError("the images of this report live inside a Parquet file and have no file path Label Studio "
                          "can serve: write them out (e.g. shared data's materialize.py) and pass --image-url with "
                          "{path} where they are served")
    tasks = []
    for r in rows.to_dict("records"):
        r = {k: plain(v) for k, v in r.items()}
        data = {"memscan": "export 1", "image": image_url.replace("{path}", quote(r["path"])),
                **{k: r[k] for k in FIELDS}, "memscan_rank": r["memscan_rank"]}
        pred = {"model_version": "memscan", "score": r["mislabel_score"],
                "result": [{"from_name": from_name, "to_name": to_name, "type": "choices",
                            "value": {"choices": [r["suggested_label_name"]]}}]}
        tasks.append({"data": data, "predictions": [pred]})
    return tasks


def label_studio_config(classes) -> str:
    """A labelling config that matches ``label_studio_tasks``' defaults, for a new project."""
    from xml.sax.saxutils import quoteattr
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
    return (f'<View>\n  <Image name="image" value="$image"/>\n  <Choices name="label" toName="image" '
            f'choice="single" showInline="true">\n{choices}\n  </Choices>\n</View>\n')


def suspects_csv(report, *, category=None, top=None) -> str:
    """The suspects as CSV text (``memscan_rank`` first); text cells that a spreadsheet would run as a
    formula get a leading ' (as ``rank --format csv``)."""
    rows, _ = suspects(report, category=category, top=top)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    cols = ("memscan_rank",) + FIELDS
    w.writerow(cols)
    for r in rows[list(cols)].to_dict("records"):
        w.writerow([spreadsheet_safe(plain(r[c])) for c in cols])
    return buf.getvalue()


def check_dest(report, out: Path, fmt: str) -> Path:
    """An export file lies outside the dataset and replaces only an earlier export."""
    from .dataset_guard import guard_for_report
    from .files import check_output_file
    guard_for_report(report).check_file(out)
    sig = LABEL_STUDIO_SIGNATURE if fmt == "label-studio" else CSV_SIGNATURE
    if fmt == "label-studio" and _empty_export(out):   # no suspects: the export is "[]", which bears no signature
        sig = b"[]"
    return check_output_file(out, signature=sig, example="suspects.json" if fmt == "label-studio" else "suspects.csv",
                             at_start=True)


def _empty_export(p: Path) -> bool:
    try:
        return p.is_file() and not p.is_symlink() and p.stat().st_size <= 16 and p.read_bytes().strip() == b"[]"
    except OSError:
        return False


def tasks_json(tasks: list, indent: int | None = None) -> str:
    """Strict JSON (a non-finite score becomes null: Label Studio's parser rejects Infinity)."""
    from .files import dumps
    return dumps(tasks, indent=indent)


def write_export(report, out, fmt: str, **kw) -> Path:
    from .files import write_text_atomic
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not valid; choose one of: {', '.join(FORMATS)}")
    out = check_dest(report, Path(out), fmt)
    text = tasks_json(label_studio_tasks(report, **kw)) if fmt == "label-studio" \
        else suspects_csv(report, **{k: v for k, v in kw.items() if k in ("category", "top")})
    return write_text_atomic(out, text)
