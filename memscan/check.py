"""The data-quality gate behind ``memscan check`` and ``memscan run --check``.

A gate compares one number from a report with a limit: the fraction of samples flagged
``mislabeled`` (``max_mislabeled``), their count (``max_count``), the flagged fraction inside one
class (``class_max``), and, against a baseline report of the same dataset, the number of new
suspects (``max_new``). With a reviewer's ``accepted`` decisions file (``memscan.decisions``), samples
marked keep (while they carry the label they were kept with) count in no gate, and relabel/remove
decisions the dataset does not reflect yet are listed. Beyond labels (``data_audit``): redundant
duplicates (``max_duplicates``: images beyond the first of each duplicate group), test images that
duplicate training images (``max_leaks``, a run with ``--test``) and images with an image issue
(``max_image_issues``). ``check_report`` returns every gate's value, limit, verdict and the top
offending samples; it never exits or prints: the CLI maps ``CheckResult.passed`` to exit 0 or 1.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from .diff import SAMPLE_FIELDS, diff_reports
from .errors import ConfigError, ReportError
from .files import records
from .report import frame_and_name

SPEC_KEYS = ("max-mislabeled", "max-count", "class-max", "baseline", "max-new", "accepted", "max-duplicates",
             "max-leaks", "max-image-issues")
AUDIT_GATES = ("max_duplicates", "max_leaks", "max_image_issues")
AUDIT_CHECK_COLUMNS = ("duplicate_group", "duplicate_of", "duplicate_kind", "duplicate_similarity", "image_issue")
OFFENDER_FIELDS = ("path", "label_name", "pred_name", "p_pred", "mislabel_score", "category")
CHECK_COLUMNS = tuple(dict.fromkeys(OFFENDER_FIELDS + SAMPLE_FIELDS))


@dataclass
class GateResult:
    name: str            # "max-mislabeled", "max-count", "class-max[cat]", "max-new"
    passed: bool
    value: float
    limit: float
    kind: str            # "fraction" or "count"
    message: str
    offenders: list[dict] = field(default_factory=list)   # most suspicious first


@dataclass
class CheckResult:
    report: str
    samples: int
    flagged: int
    passed: bool
    gates: list[GateResult]
    diff: dict | None = None     # ReportDiff.counts() when a baseline was given
    accepted: dict | None = None  # with a decisions file: its path, samples excused (kept), decisions not applied

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]


def _fraction(name: str, v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={v!r} is not a number; give a fraction such as 0.02 (2%)") from None
    if not 0 <= v <= 1:
        raise ConfigError(f"{name}={v} must be a fraction between 0 and 1 (0.02 means 2%)")
    return v


def _count(name: str, v) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={v!r} is not a whole number of samples") from None
    if f < 0 or f != int(f):
        raise ConfigError(f"{name}={v} must be a whole number of samples, 0 or more")
    return int(f)


def parse_class_max(items) -> dict[str, float]:
    """``["cat=0.05", "dog=0.1"]`` (or one comma-joined string) -> ``{"cat": 0.05, "dog": 0.1}``."""
    if isinstance(items, str):
        items = [items]
    out = {}
    for item in items or ():
        for part in filter(None, (p.strip() for p in str(item).split(","))):
            name, sep, val = part.rpartition("=") if "=" in part else part.rpartition(":")
            if not sep or not name:
                raise ConfigError(f"--class-max {part!r} must look like CLASS=FRACTION, e.g. cat=0.05")
            out[name] = _fraction(f"--class-max {name}", val)
    return out


def parse_spec(spec) -> dict:
    """The ``memscan run --check`` text, e.g. ``"max-mislabeled=0.02, max-count=50, class-max=cat:0.05"``,
    as keyword arguments of ``check_report``. Several strings (a repeated option) are merged."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    kw: dict = {}
    for s in specs:
        for part in filter(None, re.split(r"[,\s]+", s.strip())):
            key, sep, val = part.partition("=")
            key = key.strip().lstrip("-").replace("_", "-")
            if not sep or key not in SPEC_KEYS or not val:
                raise ConfigError(f"--check {part!r} is not a gate; write KEY=VALUE with KEY one of: "
                                  f"{', '.join(SPEC_KEYS)} (e.g. max-mislabeled=0.02)")
            if key == "class-max":
                kw.setdefault("class_max", {}).update(parse_class_max(val.replace(":", "=", 1)))
            elif key == "max-mislabeled":
                kw["max_mislabeled"] = _fraction("--check max-mislabeled", val)
            elif key in ("max-count", "max-new", "max-duplicates", "max-leaks", "max-image-issues"):
                kw[key.replace("-", "_")] = _count(f"--check {key}", val)
            elif key == "accepted":
                from .decisions import read_decisions
                read_decisions(val)          # a missing or malformed file fails before any training
                kw["accepted"] = val
            else:
                kw["baseline"] = val
    if set(kw) == {"accepted"}:
        raise ConfigError("--check accepted=PATH excuses samples from the gates; add a gate, e.g. "
                          "max-mislabeled=0.02")
    if "max_new" in kw and "baseline" not in kw:
        raise ConfigError("--check max-new needs baseline=PATH (an earlier report of the same dataset)")
    if not kw:
        raise ConfigError("--check is empty; give at least one gate, e.g. max-mislabeled=0.02")
    return kw


def _offenders(df, top: int) -> list[dict]:
    rows = df.sort_values("mislabel_score", ascending=False, kind="stable").head(top)
    return records(rows, OFFENDER_FIELDS)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def check_report(report, /, *, max_mislabeled=None, max_count=None, class_max=None, baseline=None,
                 max_new=None, accepted=None, top: int = 10, max_duplicates=None, max_leaks=None,
                 max_image_issues=None) -> CheckResult:
    """Gate a report (run folder, report.parquet or DataFrame). Give at least one limit.

    Flagged = ``category == "mislabeled"``, less the samples ``accepted`` (a decisions CSV) marks keep.
    ``class_max``: ``{class_name: fraction}``. ``max_new`` needs ``baseline`` (an earlier report of the
    same dataset, matched by path). ``max_duplicates``, ``max_leaks``, ``max_image_issues``: counts.
    """
    audit_limits = {"max_duplicates": max_duplicates, "max_leaks": max_leaks, "max_image_issues": max_image_issues}
    if all(v is None for v in (max_mislabeled, max_count, max_new, *audit_limits.values())) and not class_max:
        raise ConfigError("no threshold given; pass at least one of --max-mislabeled, --max-count, --class-max, "
                          "--max-duplicates, --max-leaks, --max-image-issues or --baseline with --max-new")
    audit_limits = {k: _count("--" + k.replace("_", "-"), v) for k, v in audit_limits.items() if v is not None}
    if max_new is not None and baseline is None:
        raise ConfigError("--max-new needs --baseline (an earlier report of the same dataset)")
    max_mislabeled = None if max_mislabeled is None else _fraction("--max-mislabeled", max_mislabeled)
    max_count = None if max_count is None else _count("--max-count", max_count)
    max_new = None if max_new is None else _count("--max-new", max_new)
    class_max = parse_class_max(class_max) if isinstance(class_max, (str, list, tuple)) else dict(class_max or {})
    df, name = _checkable(report, class_max, audit=bool(audit_limits))
    flagged = df[df["category"] == "mislabeled"]
    excused, accepted_info = set(), None
    if accepted is not None:
        excused, accepted_info = _accepted(accepted, df, flagged)
        flagged = flagged[~flagged["path"].isin(excused)]
    gates = _label_gates(df, flagged, max_mislabeled, max_count, class_max, top)
    diff = None
    if baseline is not None:
        d = diff_reports(baseline, df, new_name=name)
        d.new_suspects = [r for r in d.new_suspects if r["path"] not in excused]
        diff = d.counts()
        if max_new is not None:
            gates.append(_new_suspects_gate(d, max_new, top))
    gates += audit_gates(report, df, name, audit_limits, top, excused)
    return CheckResult(report=name, samples=len(df), flagged=len(flagged), passed=all(g.passed for g in gates),
                       gates=gates, diff=diff, accepted=accepted_info)


def _checkable(report, class_max: dict, *, audit: bool):
    """The report as a DataFrame and its name, refused when a gate on it would mean nothing."""
    df, name = frame_and_name(report, CHECK_COLUMNS, AUDIT_CHECK_COLUMNS if audit else ())
    if len(df) == 0:
        raise ReportError(f"'{name}' has no samples; nothing to check")
    if not np.isfinite(df["mislabel_score"].to_numpy(np.float64)).all():
        raise ReportError(f"'{name}' has non-finite mislabel scores; a gate on them would pass garbage: re-run "
                          "'memscan run' (and check the run's loss)")
    classes = sorted(set(df["label_name"]))
    for c in class_max:
        if c not in classes:
            raise ConfigError(f"--class-max {c!r} is not a class of '{name}'; classes: {', '.join(classes)}")
    return df, name

def _accepted(accepted, df, flagged) -> tuple[set, dict]:
    """The paths a decisions CSV marks keep (excused from every gate), and what the file holds."""
    from .decisions import accepted_paths, pending, read_decisions
    decisions = read_decisions(accepted)
    excused = accepted_paths(decisions, df["path"], df["label_name"])
    waiting = pending(decisions, df["path"], df["label_name"])
    return excused, {"file": str(accepted), "decisions": len(decisions),
                     "excused": int(flagged["path"].isin(excused).sum()),
                     "pending_relabel": waiting["relabel"], "pending_remove": waiting["remove"],
                     "unmatched": waiting["unmatched"]}


def _label_gates(df, flagged, max_mislabeled, max_count, class_max: dict, top: int) -> list[GateResult]:
    """The gates on the ``mislabeled`` category: its fraction, its count, and its fraction within a class."""
    n, k = len(df), len(flagged)
    gates = []
    if max_mislabeled is not None:
        frac = k / n
        ok = frac <= max_mislabeled
        over = k - int(max_mislabeled * n)
        msg = (f"{_pct(frac)} of {n} samples flagged mislabeled ({k}) "
               + (f"<= limit {_pct(max_mislabeled)}" if ok else
                  f"> limit {_pct(max_mislabeled)}: over by {100 * (frac - max_mislabeled):.2f} points ({over} samples)"))
        gates.append(GateResult("max-mislabeled", ok, frac, max_mislabeled, "fraction", msg,
                                [] if ok else _offenders(flagged, top)))
    if max_count is not None:
        ok = k <= max_count
        msg = f"{k} samples flagged mislabeled " + (f"<= limit {max_count}" if ok else
                                                      f"> limit {max_count}: over by {k - max_count}")
        gates.append(GateResult("max-count", ok, k, max_count, "count", msg, [] if ok else _offenders(flagged, top)))
    for c, lim in class_max.items():
        in_c = df["label_name"] == c
        fc = flagged[flagged["label_name"] == c]
        frac = len(fc) / int(in_c.sum())
        ok = frac <= lim
        msg = (f"class {c!r}: {_pct(frac)} of its {int(in_c.sum())} samples flagged mislabeled ({len(fc)}) "
               + (f"<= limit {_pct(lim)}" if ok else f"> limit {_pct(lim)}: over by {100 * (frac - lim):.2f} points"))
        gates.append(GateResult(f"class-max[{c}]", ok, frac, lim, "fraction", msg, [] if ok else _offenders(fc, top)))
    return gates


def _new_suspects_gate(d, max_new: int, top: int) -> GateResult:
    """Suspects the baseline did not have (``diff_reports``), less the accepted ones."""
    m = len(d.new_suspects)
    ok = m <= max_new
    msg = (f"{m} new suspects since the baseline ({len(d.resolved_suspects)} resolved, "
           f"{len(d.relabelled)} relabelled) " + (f"<= limit {max_new}" if ok else
                                                f"> limit {max_new}: over by {m - max_new}"))
    return GateResult("max-new", ok, m, max_new, "count", msg,
                      [] if ok else [{k: r[k] for k in OFFENDER_FIELDS} for r in d.new_suspects[:top]])


def audit_gates(report, df, name: str, limits: dict, top: int, excused=frozenset()) -> list[GateResult]:
    """The gates beyond labels: duplicates, leaks into the test set, image issues (counts). Images a
    reviewer kept (``excused``) count in none: a kept image with an issue is fine as it is, and kept
    members of a duplicate group are wanted."""
    gates = []
    if ("max_duplicates" in limits or "max_image_issues" in limits) and not set(AUDIT_CHECK_COLUMNS) <= set(df):
        raise ReportError(f"'{name}' has no duplicate or image-issue columns (written by an older memscan): re-run "
                          "'memscan run' to gate them")
    kept = df["path"].isin(excused)
    if "max_duplicates" in limits:
        lim, grouped = limits["max_duplicates"], df[df["duplicate_group"] >= 0]
        m = redundant(grouped["duplicate_group"].to_numpy(), kept[df["duplicate_group"] >= 0].to_numpy())
        ok = m <= lim
        msg = (f"{m} redundant duplicates ({len(grouped)} images in {grouped['duplicate_group'].nunique()} groups) "
               + (f"<= limit {lim}" if ok else f"> limit {lim}: over by {m - lim}"))
        rows = grouped.sort_values(["duplicate_similarity", "path"], ascending=[False, True]).head(top)
        gates.append(GateResult("max-duplicates", ok, m, lim, "count", msg, [] if ok else
                                records(rows, ("path", "label_name", "duplicate_of", "duplicate_kind",
                                               "duplicate_similarity"))))
    if "max_image_issues" in limits:
        lim, hit = limits["max_image_issues"], df[(df["image_issue"] != "") & ~kept]
        ok = len(hit) <= lim
        msg = f"{len(hit)} images with an image issue " + (f"<= limit {lim}" if ok else
                                                          f"> limit {lim}: over by {len(hit) - lim}")
        gates.append(GateResult("max-image-issues", ok, len(hit), lim, "count", msg, [] if ok else
                                records(hit.head(top), ("path", "label_name", "image_issue"))))
    if "max_leaks" in limits:
        gates.append(_leak_gate(report, name, limits["max_leaks"], top))
    return gates


def redundant(group: np.ndarray, kept: np.ndarray) -> int:
    """Images that could go: in each group, the members nobody kept, less one to keep when nobody kept any."""
    _, g = np.unique(group, return_inverse=True)
    kept_per_group = np.bincount(g, weights=kept)
    return int((~kept).sum() - (kept_per_group == 0).sum())


def _leak_gate(report, name: str, lim: int, top: int) -> GateResult:
    from .data_audit import read_leaks
    from .report import read_metadata, resolve_report_path
    if hasattr(report, "columns"):
        raise ConfigError("--max-leaks reads the run's leak figures: pass the run folder or its report.parquet, "
                          "not a DataFrame")
    test = read_metadata(report).audit.get("test")
    if not test:
        raise ReportError(f"'{name}' was not run with --test: no leak figures to gate; re-run 'memscan run DATASET "
                          "--test TEST_SET'")
    try:
        m, n, differs = int(test["leaked"]), int(test["n"]), int(test["label_differs"])
    except (KeyError, TypeError, ValueError):
        raise ReportError(f"'{name}' has damaged leak figures in its metadata; re-run 'memscan run --test'") from None
    ok = m <= lim
    skipped = test.get("skipped") if isinstance(test.get("skipped"), int) else 0
    msg = (f"{m} of {n} test images duplicate training images ({differs} with another label) "
           + (f"<= limit {lim}" if ok else f"> limit {lim}: over by {m - lim}")
           + (f"; {skipped} unreadable test images were not checked" if skipped else ""))
    offenders = []
    leaks_file = resolve_report_path(report).parent / "leaks.parquet"
    if not ok and leaks_file.is_file():
        offenders = records(read_leaks(leaks_file).head(top),
                            ("test_path", "train_path", "test_label", "train_label", "kind", "similarity"))
    return GateResult("max-leaks", ok, m, lim, "count", msg, offenders)
