"""What more than one command prints or writes: the gate's verdict and CI files, the HTML page.

``memscan check`` and ``memscan run --check`` share the gate's output; ``memscan report`` and
``memscan run --html`` share the page.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.table import Table

from .console import console, err_console, safe

EXIT_FAILED = 1


def check_ci_paths(report, *, junit: Optional[Path] = None, summary_md: Optional[Path] = None) -> None:
    """Before anything is written: the output files lie outside the dataset and replace only files
    memscan wrote."""
    import os

    from ..ci_formats import JUNIT_SIGNATURE, MARKDOWN_SIGNATURE
    from ..dataset_guard import guard_for_report
    from ..files import check_output_file
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    guard = guard_for_report(report) if (junit or summary_md or step_summary) else None
    for path, sig, what, example in ((junit, JUNIT_SIGNATURE, "--junit", "check.xml"),
                                     (summary_md, MARKDOWN_SIGNATURE, "--summary-md", "check.md")):
        if path:
            guard.check_file(path, what=what)
            check_output_file(path, signature=sig, what=what, example=example, at_start=sig is MARKDOWN_SIGNATURE)
    if step_summary:
        guard.check_file(step_summary, what="$GITHUB_STEP_SUMMARY")


def write_ci_files(result, *, junit: Optional[Path] = None, summary_md: Optional[Path] = None) -> None:
    """JUnit XML and Markdown where asked, and the job summary when $GITHUB_STEP_SUMMARY is set."""
    from ..ci_formats import append_step_summary, junit_xml, markdown_summary
    from ..files import write_text_atomic
    md = markdown_summary(result)
    if junit:
        write_text_atomic(junit, junit_xml(result))
    if summary_md:
        write_text_atomic(summary_md, md)
    append_step_summary(md)


def print_check(result) -> int:
    """Print each gate's verdict and the offenders of failed gates; return the exit code (0 pass, 1 fail)."""
    for g in result.gates:
        mark = "[green]PASS[/]" if g.passed else "[bold red]FAIL[/]"
        console.print(f"{mark} {safe(g.name)}: {safe(g.message)}", highlight=False)
    for g in result.failed:
        if g.offenders and "mislabel_score" not in g.offenders[0]:   # duplicates, leaks, image issues
            t = Table(title=f"top offenders — {safe(g.name)}", title_justify="left")
            for c in g.offenders[0]:
                t.add_column(c, overflow="fold")
            for o in g.offenders:
                t.add_row(*(f"{v:.3f}" if isinstance(v, float) else safe(str(v)) for v in o.values()))
            console.print(t)
        elif g.offenders:
            t = Table(title=f"top offenders — {safe(g.name)}", title_justify="left")
            for c in ("path", "given", "predicted", "p", "mislabel_score"):
                t.add_column(c, overflow="fold")
            for o in g.offenders:
                t.add_row(safe(o["path"]), safe(str(o["label_name"])), safe(str(o["pred_name"])),
                          f"{o['p_pred']:.2f}", f"{o['mislabel_score']:.3f}")
            console.print(t)
    a = result.accepted
    if a is not None:
        console.print(f"accepted: {a['excused']} flagged samples kept by a reviewer are not counted "
                      f"({safe(a['file'])}, {a['decisions']} decisions, {a['unmatched']} matching no sample)",
                      highlight=False)
        for kind in ("relabel", "remove"):
            waiting = a[f"pending_{kind}"]
            if waiting:
                shown = ", ".join(safe(p) for p in waiting[:5]) + (" ..." if len(waiting) > 5 else "")
                console.print(f"[yellow]not applied yet[/]: {len(waiting)} {kind} decision(s): {shown} "
                              f"(memscan apply RUN {safe(a['file'])} --out cleaned.csv)", highlight=False)
    if result.passed:
        console.print(f"[bold green]data check passed[/] ({len(result.gates)} gates, {result.samples} samples)")
    else:
        console.print(f"[bold red]data check failed[/]: {safe(', '.join(g.name for g in result.failed))} "
                      f"(see: {'; '.join(_where_to_look(result))})", highlight=False)
    return 0 if result.passed else EXIT_FAILED


def _where_to_look(result) -> list[str]:
    report, names = safe(result.report), {g.name.split("[")[0] for g in result.failed}
    out = []
    if names & {"max-mislabeled", "max-count", "class-max", "max-new"}:
        out.append(f"memscan rank {report} --category mislabeled")
    if "max-duplicates" in names:
        out.append(f"memscan rank {report} --by duplicate")
    if "max-image-issues" in names:
        out.append(f"the image_issue column, or memscan rank {report} --by blur")
    if "max-leaks" in names:
        out.append("leaks.parquet in the run folder")
    return out


def write_report_html(run_dir, out=None, *, per_category: int = 300, quiet: bool = False, reference=None):
    """``reference``: a memorization estimate's path, or None (a bad one raises ReportError)."""
    from ..html_report import write_html
    res = write_html(run_dir, out, per_category=per_category, reference=reference)
    if res.warning and not quiet:
        err_console.print(f"[yellow]warning:[/] {res.warning}", highlight=False)
    return res
