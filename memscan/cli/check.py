"""memscan check: gate a report against quality thresholds (exit 0 pass, 1 fail, 2 usage error)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from . import app
from .console import console, safe

EXIT_FAILED = 1


def check_ci_paths(report, *, junit: Optional[Path] = None, summary_md: Optional[Path] = None) -> None:
    """Before anything is written: the output files lie outside the dataset and replace only files
    memscan wrote."""
    from ..ci_formats import JUNIT_SIGNATURE, MARKDOWN_SIGNATURE
    from ..dataset_guard import guard_for_report
    from ..files import check_output_file
    guard = guard_for_report(report) if (junit or summary_md) else None
    for path, sig, what, example in ((junit, JUNIT_SIGNATURE, "--junit", "check.xml"),
                                     (summary_md, MARKDOWN_SIGNATURE, "--summary-md", "check.md")):
        if path:
            guard.check_file(path, what=what)
            check_output_file(path, signature=sig, what=what, example=example)


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
        if g.offenders:
            t = Table(title=f"top offenders — {safe(g.name)}", title_justify="left")
            for c in ("path", "given", "predicted", "p", "mislabel_score"):
                t.add_column(c, overflow="fold")
            for o in g.offenders:
                t.add_row(safe(o["path"]), safe(str(o["label_name"])), safe(str(o["pred_name"])),
                          f"{o['p_pred']:.2f}", f"{o['mislabel_score']:.3f}")
            console.print(t)
    if result.passed:
        console.print(f"[bold green]data check passed[/] ({len(result.gates)} gates, {result.samples} samples)")
    else:
        console.print(f"[bold red]data check failed[/]: {safe(', '.join(g.name for g in result.failed))} "
                      f"(see: memscan rank {safe(result.report)} --category mislabeled)", highlight=False)
    return 0 if result.passed else EXIT_FAILED


@app.command("check")
def check_cmd(
    report: Path = typer.Argument(..., help="Run folder or report.parquet to gate."),
    max_mislabeled: Optional[float] = typer.Option(None, help="Fail when more than this fraction of samples is "
                                                   "flagged mislabeled (0.02 = 2%)."),
    max_count: Optional[int] = typer.Option(None, help="Fail when more than this many samples are flagged mislabeled."),
    class_max: Optional[List[str]] = typer.Option(None, help="CLASS=FRACTION: per-class limit on the flagged "
                                                  "fraction; repeat for several classes."),
    baseline: Optional[Path] = typer.Option(None, help="Earlier report of the same dataset (matched by path)."),
    max_new: Optional[int] = typer.Option(None, help="With --baseline: fail when more than this many new suspects."),
    junit: Optional[Path] = typer.Option(None, help="Write a JUnit XML file (one test case per gate)."),
    summary_md: Optional[Path] = typer.Option(None, help="Write a Markdown summary (also appended to "
                                              "$GITHUB_STEP_SUMMARY when set)."),
    top: int = typer.Option(10, help="Offending samples listed per failed gate."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (as memscan.check.check_report "
                                 "returns it)."),
):
    """Gate a report: exit 0 when the data passes, 1 when a threshold is exceeded, 2 on a usage error."""
    from ..check import check_report
    check_ci_paths(report, junit=junit, summary_md=summary_md)
    res = check_report(report, max_mislabeled=max_mislabeled, max_count=max_count, class_max=class_max or None,
                       baseline=baseline, max_new=max_new, top=top)
    write_ci_files(res, junit=junit, summary_md=summary_md)
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=1))
        raise typer.Exit(0 if res.passed else EXIT_FAILED)
    raise typer.Exit(print_check(res))
