"""A reviewer's decisions on flagged samples, and what follows from them: a cleaned manifest, and a gate
that stops counting what a person already accepted.

``decisions.csv`` (downloaded from ``report.html``, or written by hand): one row per reviewed sample,
columns ``path`` (as in the report), ``given`` (the label the reviewer saw), ``decision`` (keep | relabel |
remove), ``new_label`` (the class, for relabel) and ``note``. Rows are matched to a report by path (``match``:
exactly, or as the tail of a longer path, as in a manifest ``apply`` wrote), so a file stays valid while
samples are added to or removed from the dataset; a ``keep`` counts only while the sample still carries the
label it was kept with.

``apply_decisions`` never touches the dataset: it writes a new manifest (CSV with paths, or Parquet with
the image bytes for a dataset that keeps them inside a Parquet file) that ``memscan run`` reads directly.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, DatasetError
from .text import printable

DECISIONS = ("keep", "relabel", "remove")
DECISION_COLUMNS = ("path", "given", "decision", "new_label", "note")
MARK_COLUMN = "memscan_decision"      # in every manifest ``apply`` writes: the one file kind it may replace
CSV_HEADER = ("path", "label_name", MARK_COLUMN)
PARQUET_HEADER = (*CSV_HEADER, "image")
MAX_DECISIONS_BYTES = 256 * 2 ** 20


@dataclass(frozen=True)
class Decision:
    path: str
    given: str | None       # None: the reviewer's label is not recorded (matches any)
    decision: str           # keep | relabel | remove
    new_label: str | None
    note: str = ""


def read_decisions(file, classes=None) -> dict[str, Decision]:
    """path -> Decision, validated; every problem is one ``ConfigError`` naming the file, the row and the
    fix. ``classes``: when given, a relabel must name one of them."""
    p = Path(file)
    if not p.is_file():
        raise ConfigError(f"decisions file '{p}' does not exist or is not a file; download decisions.csv from "
                          "report.html or write one with the columns path,decision[,given,new_label,note]")
    if p.stat().st_size > MAX_DECISIONS_BYTES:
        raise ConfigError(f"decisions file '{p}' is over {MAX_DECISIONS_BYTES >> 20} MiB; it cannot be a decisions "
                          "file")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"decisions file '{p}' is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    rows = csv.DictReader(io.StringIO(text, newline=""))
    try:
        cols = [c.strip() for c in (rows.fieldnames or [])]
        missing = [c for c in ("path", "decision") if c not in cols]
        if missing:
            optional = [c for c in DECISION_COLUMNS if c not in ("path", "decision")]
            raise ConfigError(f"decisions file '{p}' lacks the column(s) {', '.join(missing)}; its header must name "
                              f"path and decision (and may add {', '.join(optional)})")
        twice = sorted({c for c in cols if cols.count(c) > 1})
        if twice:
            raise ConfigError(f"decisions file '{p}' names the column(s) {', '.join(map(printable, twice))} more than "
                              "once; keep one of each")
        return _decisions(rows, p, classes)
    except csv.Error as e:   # e.g. a field over the csv module's 128 KiB limit
        raise ConfigError(f"decisions file '{p}' is not readable CSV near row {rows.line_num + 1} ({e}); write "
                          "one decision per row: path,decision[,given,new_label,note]") from None


def _decisions(rows, p: Path, classes) -> dict[str, Decision]:
    out: dict[str, Decision] = {}
    for line, raw in enumerate(rows, start=2):
        r = {(k or "").strip(): (v if isinstance(v, str) else "") for k, v in raw.items()}
        where = f"decisions file '{p}' row {line}"
        path, decision = r.get("path", ""), r.get("decision", "").strip().lower()
        if not path:
            raise ConfigError(f"{where} has no path; every row names the sample's path as in the report")
        if decision not in DECISIONS:
            raise ConfigError(f"{where}: decision {printable(decision)!r} is not one of {', '.join(DECISIONS)}")
        new = r.get("new_label", "").strip() or None
        if decision == "relabel":
            if new is None:
                raise ConfigError(f"{where} relabels '{printable(path)}' without a new_label; name the class")
            if classes is not None and new not in classes:
                raise ConfigError(f"{where} relabels '{printable(path)}' to {printable(new)!r}, which is not a "
                                  f"class of the dataset; classes: {', '.join(map(printable, classes))}")
        if path in out:
            raise ConfigError(f"{where} repeats '{printable(path)}'; keep one decision per sample")
        out[path] = Decision(path, r.get("given", "").strip() or None, decision,
                             new if decision == "relabel" else None, r.get("note", ""))
    return out


def match(decisions: dict[str, Decision], paths) -> dict[str, Decision]:
    """Report path -> its decision. A path matches a decision's path exactly or, failing that, ends with it
    after a "/" (a manifest written by ``apply`` outside the dataset lists the same files by longer paths);
    a tail that ends more than one path matches none of them."""
    out, tails = {}, {}
    for p in paths:
        p = str(p)
        if p in decisions:
            out[p] = decisions[p]
            continue
        parts = p.split("/")
        for i in range(1, len(parts)):
            tails.setdefault("/".join(parts[i:]), []).append(p)
    exact = {d.path for d in out.values()}
    for key, d in decisions.items():
        if key not in exact and len(hits := tails.get(key, ())) == 1:
            if hits[0] in out:   # two decisions, one sample: no order between rows decides which one holds
                raise ConfigError(f"the decisions '{printable(out[hits[0]].path)}' and '{printable(key)}' both name "
                                  f"the sample '{printable(hits[0])}'; keep one decision per sample")
            out[hits[0]] = d
    return out


def accepted_paths(decisions: dict[str, Decision], paths, labels) -> set[str]:
    """The report paths a reviewer kept while they carry the label they were kept with."""
    m = match(decisions, paths)
    return {p for p, lab in zip(paths, labels)
            if (d := m.get(p)) is not None and d.decision == "keep" and d.given in (None, lab)}


def pending(decisions: dict[str, Decision], paths, labels) -> dict:
    """Decisions the dataset behind a report does not reflect yet: relabels whose sample still has its old
    label, removals whose sample is still there (report paths); and how many decisions match no sample."""
    here = dict(zip(paths, labels))
    m = match(decisions, paths)
    relabel = sorted(p for p, d in m.items() if d.decision == "relabel" and here[p] != d.new_label)
    remove = sorted(p for p, d in m.items() if d.decision == "remove")
    return {"relabel": relabel, "remove": remove, "unmatched": len(decisions) - len({d.path for d in m.values()})}


@dataclass
class ApplyResult:
    out: Path
    samples: int              # rows of the cleaned manifest
    kept: int                 # decisions "keep" that matched a sample
    relabelled: int
    removed: int
    unmatched: list[str] = field(default_factory=list)   # decisions naming no sample of the report
    left_out: list[dict] = field(default_factory=list)   # image files the index could not list: not in the manifest
    changes: dict = field(default_factory=dict)          # "old -> new" -> count


def _existing_is_ours(p: Path) -> bool:
    """A manifest ``apply`` wrote: its header (CSV) or schema (Parquet) is exactly the one it writes."""
    import pyarrow.parquet as pq
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            return pq.read_schema(p).names == list(PARQUET_HEADER)
        with open(p, "rb") as f:
            head = f.readline(65536).decode("utf-8")
        return next(csv.reader([head])) == list(CSV_HEADER)
    except Exception:
        return False


def _check_out(out: Path, guard, bytes_inside: bool) -> Path:
    from .errors import OutputExistsError
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ConfigError(f"--out '{out}' must end in .csv or .parquet (the manifest format memscan reads)")
    if bytes_inside and suffix == ".csv":
        raise ConfigError(f"--out '{out}': this dataset keeps its images inside a Parquet file, so the cleaned "
                          "manifest must carry them too: give a .parquet path")
    if not bytes_inside and suffix != ".csv":
        raise ConfigError(f"--out '{out}': the cleaned manifest of a dataset of image files is a CSV of their paths; "
                          f"give a .csv path, e.g. '{out.with_suffix('.csv')}'")
    guard.check_file(out)
    if out.is_dir():
        raise ConfigError(f"--out '{out}' is a folder; give a file path, e.g. '{out / 'cleaned.csv'}'")
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_file() or not _existing_is_ours(out):
            raise OutputExistsError(f"--out '{out}' exists and is not a manifest written by 'memscan apply'; "
                                    "refusing to overwrite it: choose another path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out '{out}': cannot create its folder ({e.strerror or e}); give a path inside a "
                          "folder") from None
    return out


def apply_decisions(report, decisions_file, out) -> ApplyResult:
    """Write the dataset of ``report`` as a manifest at ``out`` with the relabels applied and the removals
    dropped (every other sample as it is). Paths in a CSV are relative to the CSV's folder where they can
    be, absolute otherwise; a Parquet-bytes dataset gives a Parquet file with the bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from .data import load_index
    from .dataset_guard import guard_for_report
    from .files import write_atomic_with
    from .report import read_frame, read_metadata, resolve_report_path
    rpath = resolve_report_path(report)
    ds = read_metadata(rpath).dataset
    read_frame(rpath, ["path", "label_name"])          # a damaged report fails here, before any writing
    decisions = read_decisions(decisions_file, ds.classes)
    out = _check_out(Path(out), guard_for_report(rpath), ds.source == "parquet-bytes")
    try:
        table = load_index(Path(ds.location))
    except DatasetError as e:
        raise DatasetError(f"the dataset of '{rpath}' cannot be read ({e}); apply needs it where the run saw it: "
                           f"'{ds.location}'") from None
    matched = match(decisions, table.paths)
    paths, names, marks, keep_rows, changes = [], [], [], [], {}
    for i, path in enumerate(table.paths):
        given = table.class_names[table.labels[i]]
        d = matched.get(path)
        if d is not None and d.decision == "remove":
            continue
        new = d.new_label if d is not None and d.decision == "relabel" else given
        if new != given:
            changes[f"{given} -> {new}"] = changes.get(f"{given} -> {new}", 0) + 1
        paths.append(path)
        names.append(new)
        marks.append(d.decision if d is not None else "")
        keep_rows.append(i)
    used = {d.path for d in matched.values()}
    unmatched = sorted(p for p in decisions if p not in used)
    cols = {"path": [_rel(table.root / p, out.parent) for p in paths] if ds.source != "parquet-bytes" else paths,
            "label_name": names, MARK_COLUMN: marks}
    if ds.source == "parquet-bytes":
        cols["image"] = pa.array([table.read_bytes(i) for i in keep_rows], pa.binary())
        t = pa.table(cols).select(list(PARQUET_HEADER))
        write_atomic_with(out, lambda tmp: pq.write_table(t, tmp))
    else:
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(CSV_HEADER)
        w.writerows(zip(cols["path"], names, marks))
        write_atomic_with(out, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8", newline=""))
    count = lambda kind: sum(d.decision == kind for d in matched.values())
    return ApplyResult(out, len(paths), count("keep"), count("relabel"), count("remove"), unmatched=unmatched,
                       left_out=list(table.unreadable), changes=changes)


def _rel(file: Path, base: Path) -> str:
    """``file`` relative to ``base`` when it lies below it (the manifest moves with its images), else absolute."""
    file = os.path.abspath(file)
    try:
        rel = os.path.relpath(file, os.path.abspath(base))
    except ValueError:      # another drive (Windows)
        return file
    return file if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel
