"""Gate results in the formats CI systems read: JUnit XML and a Markdown job summary.

JUnit: one ``<testcase>`` per gate, a ``<failure>`` listing the offenders when it fails (Jenkins,
GitLab and GitHub test reporters all read this). Markdown: a verdict line, the gates table and the
top offenders, fit for GitHub's ``$GITHUB_STEP_SUMMARY``.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from .check import CheckResult
from .files import write_atomic_with


def _offender_line(o: dict) -> str:
    return (f"{o['path']}  given={o['label_name']}  predicted={o['pred_name']} (p={o['p_pred']:.2f})  "
            f"mislabel_score={o['mislabel_score']:.3f}")


def junit_xml(result: CheckResult) -> str:
    failures = len(result.failed)
    suite = ET.Element("testsuite", name="memscan check", tests=str(len(result.gates)), failures=str(failures),
                       errors="0", skipped="0")
    props = ET.SubElement(suite, "properties")
    for k, v in (("report", result.report), ("samples", result.samples), ("flagged_mislabeled", result.flagged)):
        ET.SubElement(props, "property", name=k, value=str(v))
    for g in result.gates:
        case = ET.SubElement(suite, "testcase", classname="memscan.check", name=g.name)
        if g.passed:
            ET.SubElement(case, "system-out").text = g.message
        else:
            f = ET.SubElement(case, "failure", message=g.message, type="ThresholdExceeded")
            f.text = "\n".join([g.message, "top offenders:"] + [_offender_line(o) for o in g.offenders])
    ET.indent(suite)
    suites = ET.Element("testsuites", name="memscan", tests=str(len(result.gates)), failures=str(failures))
    suites.append(suite)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _md_escape(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown_summary(result: CheckResult, *, title: str = "memscan data check") -> str:
    verdict = "✅ passed" if result.passed else f"❌ failed ({len(result.failed)} of {len(result.gates)} gates)"
    lines = [f"## {title}: {verdict}", "",
             f"Report `{result.report}`: {result.samples} samples, {result.flagged} flagged mislabeled "
             f"({100 * result.flagged / max(result.samples, 1):.2f}%).", "",
             "| gate | result | value | limit | detail |", "| --- | --- | ---: | ---: | --- |"]
    for g in result.gates:
        fmt = (lambda v: f"{100 * v:.2f}%") if g.kind == "fraction" else (lambda v: str(int(v)))
        lines.append(f"| `{g.name}` | {'pass' if g.passed else '**FAIL**'} | {fmt(g.value)} | {fmt(g.limit)} | "
                     f"{_md_escape(g.message)} |")
    if result.diff:
        d = result.diff
        lines += ["", f"Since the baseline: {d['new_suspects']} new suspects, {d['resolved_suspects']} resolved, "
                      f"{d['relabelled']} relabelled, {d['added']} samples added, {d['removed']} removed."]
    for g in result.failed:
        if not g.offenders:
            continue
        lines += ["", f"### Top offenders: `{g.name}`", "",
                  "| path | given | predicted | p | mislabel_score |", "| --- | --- | --- | ---: | ---: |"]
        lines += [f"| `{_md_escape(o['path'])}` | {_md_escape(o['label_name'])} | {_md_escape(o['pred_name'])} | "
                  f"{o['p_pred']:.2f} | {o['mislabel_score']:.3f} |" for o in g.offenders]
    return "\n".join(lines) + "\n"


def write_text_atomic(dest, text: str) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic_with(dest, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_step_summary(text: str) -> Path | None:
    """Append to ``$GITHUB_STEP_SUMMARY`` when it is set (GitHub Actions); other CIs: no-op."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as f:
        f.write(text + "\n")
    return Path(target)
