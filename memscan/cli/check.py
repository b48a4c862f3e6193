"""memscan check: gate a report against quality thresholds (exit 0 pass, 1 fail, 2 usage error)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from . import app
from .console import exit_code_if_reader_gone
from .outputs import EXIT_FAILED, check_ci_paths, print_check, write_ci_files


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
    accepted: Optional[Path] = typer.Option(None, help="A reviewer's decisions.csv (from report.html): samples "
                                            "marked keep are not counted; relabel/remove decisions not yet "
                                            "applied are listed."),
    max_duplicates: Optional[int] = typer.Option(None, help="Fail when more than this many images are redundant "
                                                 "duplicates (beyond the first of each group)."),
    max_leaks: Optional[int] = typer.Option(None, help="Fail when more than this many test images duplicate "
                                            "training images (a run with --test)."),
    max_image_issues: Optional[int] = typer.Option(None, help="Fail when more than this many images are dark, blurry, "
                                                   "blank, ... (column image_issue)."),
    junit: Optional[Path] = typer.Option(None, help="Write a JUnit XML file (one test case per gate)."),
    summary_md: Optional[Path] = typer.Option(None, help="Write a Markdown summary (also appended to "
                                              "$GITHUB_STEP_SUMMARY when set)."),
    top: int = typer.Option(10, help="Offending samples listed per failed gate."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (as memscan.check.check_report "
                                 "returns it)."),
):
    """Gate a report: exit 0 when the data passes, 1 when a threshold is exceeded, 2 on a usage error."""
    from ..check import check_report
    from ..errors import ConfigError
    if top < 0:
        raise ConfigError(f"--top {top} must be 0 or more")
    check_ci_paths(report, junit=junit, summary_md=summary_md)
    res = check_report(report, max_mislabeled=max_mislabeled, max_count=max_count, class_max=class_max or None,
                       baseline=baseline, max_new=max_new, accepted=accepted, top=top,
                       max_duplicates=max_duplicates, max_leaks=max_leaks, max_image_issues=max_image_issues)
    write_ci_files(res, junit=junit, summary_md=summary_md)
    exit_code_if_reader_gone(0 if res.passed else EXIT_FAILED)
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=1))
        raise typer.Exit(0 if res.passed else EXIT_FAILED)
    raise typer.Exit(print_check(res))
