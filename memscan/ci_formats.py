"""Gate results in the formats CI systems read: JUnit XML and a Markdown job summary.

JUnit: one ``<testcase>`` per gate, a ``<failure>`` listing the offenders when it fails (Jenkins,
GitLab and GitHub test reporters all read this). Markdown: a verdict line, the gates table and the
top offenders, fit for GitHub's ``$GITHUB_STEP_SUMMARY``.
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from .check import CheckResult
from .errors import ConfigError, OutputError
from .files import write_atomic_with
from .text import printable

# In the first bytes of every file these writers produce: ``files.check_output_file`` replaces only such files.
JUNIT_SIGNATURE = b'<testsuites name="memscan"'
MARKDOWN_SIGNATURE = b"## memscan data check"   # the whole title: "## memscan setup" is a user's heading


def _offender_line(o: dict) -> str:
    # names shown escaped: a line break in a file name must not split one offender over two lines
    if "mislabel_score" not in o:   # the gates beyond labels (duplicates, leaks, image issues)
        return "  ".join(f"{k}={_cell(v)}" for k, v in o.items())
    return (f"{printable(o['path'])}  given={printable(o['label_name'])}  predicted={printable(o['pred_name'])} "
            f"(p={o['p_pred']:.2f})  mislabel_score={o['mislabel_score']:.3f}")


def _cell(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else printable(str(v))


def _x(s) -> str:
    """Text XML 1.0 can hold: it forbids most C0 controls (a NUL or ESC in a name made check.xml unparseable)."""
    return printable(s, keep="\t\n\r")


def junit_xml(result: CheckResult) -> str:
    failures = len(result.failed)
    suite = ET.Element("testsuite", name="memscan check", tests=str(len(result.gates)), failures=str(failures),
                       errors="0", skipped="0")
    props = ET.SubElement(suite, "properties")
    for k, v in (("report", result.report), ("samples", result.samples), ("flagged_mislabeled", result.flagged)):
        ET.SubElement(props, "property", name=k, value=_x(v))
    for g in result.gates:
        case = ET.SubElement(suite, "testcase", classname="memscan.check", name=_x(g.name))
        if g.passed:
            ET.SubElement(case, "system-out").text = _x(g.message)
        else:
            f = ET.SubElement(case, "failure", message=_x(g.message), type="ThresholdExceeded")
            f.text = _x("\n".join([g.message, "top offenders:"] + [_offender_line(o) for o in g.offenders]))
    ET.indent(suite)
    suites = ET.Element("testsuites", name="memscan", tests=str(len(result.gates)), failures=str(failures))
    suites.append(suite)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


_MD_SPECIAL = "\\`*_[]<>|~&"   # backslash-escaped in text cells: shown as typed, never as markup or HTML


def _md_escape(s) -> str:
    """Data as the text of a Markdown table cell (controls and line breaks shown escaped)."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in printable(s))


def _md_code(s, *, cell: bool = True) -> str:
    """Data as a code span: a fence longer than any backtick run inside; in a table ``cell``, ``\\|``
    (GitHub splits table cells on ``|`` even inside code spans)."""
    s = printable(s).replace("|", "\\|") if cell else printable(s)
    fence = "`" * (1 + max((len(r) for r in re.findall("`+", s)), default=0))
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def markdown_summary(result: CheckResult, *, title: str = "memscan data check") -> str:
    verdict = "✅ passed" if result.passed else f"❌ failed ({len(result.failed)} of {len(result.gates)} gates)"
    lines = [f"## {title}: {verdict}", "",
             f"Report {_md_code(result.report, cell=False)}: {result.samples} samples, {result.flagged} flagged "
             f"mislabeled ({100 * result.flagged / max(result.samples, 1):.2f}%).", "",
             "| gate | result | value | limit | detail |", "| --- | --- | ---: | ---: | --- |"]
    for g in result.gates:
        fmt = (lambda v: f"{100 * v:.2f}%") if g.kind == "fraction" else (lambda v: str(int(v)))
        lines.append(f"| {_md_code(g.name)} | {'pass' if g.passed else '**FAIL**'} | {fmt(g.value)} | {fmt(g.limit)} | "
                     f"{_md_escape(g.message)} |")
    if result.diff:
        d = result.diff
        lines += ["", f"Since the baseline: {d['new_suspects']} new suspects, {d['resolved_suspects']} resolved, "
                      f"{d['relabelled']} relabelled, {d['added']} samples added, {d['removed']} removed."]
    for g in result.failed:
        if not g.offenders:
            continue
        lines += ["", f"### Top offenders: {_md_code(g.name, cell=False)}", ""]
        if "mislabel_score" not in g.offenders[0]:
            keys = list(g.offenders[0])
            lines += ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
            lines += ["| " + " | ".join(_md_code(o[k]) if k.endswith("path") or k == "duplicate_of"
                                        else _md_escape(_cell(o[k])) for k in keys) + " |" for o in g.offenders]
            continue
        lines += ["| path | given | predicted | p | mislabel_score |", "| --- | --- | --- | ---: | ---: |"]
        lines += [f"| {_md_code(o['path'])} | {_md_escape(o['label_name'])} | {_md_escape(o['pred_name'])} | "
                  f"{o['p_pred']:.2f} | {o['mislabel_score']:.3f} |" for o in g.offenders]
    return "\n".join(lines) + "\n"


def append_step_summary(text: str) -> Path | None:
    """Append to ``$GITHUB_STEP_SUMMARY`` when it is set (GitHub Actions); other CIs: no-op."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    p = Path(target)
    if p.is_dir():
        raise ConfigError(f"$GITHUB_STEP_SUMMARY='{target}' is a folder, not a file; unset it or point it to a file")
    if p.exists() and (p.is_symlink() or not p.is_file()):   # a FIFO would block, a link would be followed
        raise ConfigError(f"$GITHUB_STEP_SUMMARY='{target}' is not a regular file; unset it or point it to a file")
    try:   # appended by rewriting the whole file atomically: a full disk never leaves half a summary
        before = p.read_text(encoding="utf-8", errors="surrogateescape") if p.exists() else ""
        write_atomic_with(p, lambda tmp: tmp.write_text(before + text + "\n", encoding="utf-8",
                                                        errors="surrogateescape"))
    except OSError as e:
        raise OutputError(f"could not append to $GITHUB_STEP_SUMMARY='{target}': {e.strerror or e}; unset it or "
                          "point it to a writable file") from None
    return p
