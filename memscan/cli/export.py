"""memscan export: the suspects for a labelling tool (Label Studio JSON with pre-annotations) or as CSV."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from .console import console, safe


@app.command("export")
def export_cmd(
    report: Optional[Path] = typer.Argument(None, help="Run folder or report.parquet (default: latest run under "
                                            "./memscan-runs)."),
    fmt: str = typer.Option("label-studio", "--format", "-f", help="label-studio (task JSON, the suggested label "
                            "as a pre-annotation) | csv."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write (default: standard output)."),
    category: Optional[str] = typer.Option(None, help="Only this category (default: every flagged sample)."),
    top: Optional[int] = typer.Option(None, "--top", "-n", help="At most this many, most suspicious first."),
    image_url: str = typer.Option("/data/local-files/?d={path}", help="Label Studio: the image URL, {path} being "
                                  "the sample's path (URL-quoted) relative to the dataset root."),
    from_name: str = typer.Option("label", help="Label Studio: name of the <Choices> tag of the project."),
    to_name: str = typer.Option("image", help="Label Studio: name of the <Image> tag of the project."),
    config: bool = typer.Option(False, "--config", help="Label Studio: print a labelling config that matches "
                                "these tasks (for a new project) instead of the tasks."),
):
    """Export the suspects for review in a labelling tool."""
    from ..errors import check_choice
    from ..export import FORMATS, label_studio_config, label_studio_tasks, suspects_csv, tasks_json, write_export
    from ..report import read_metadata
    from ..run_folder import latest_run
    check_choice("--format", fmt, FORMATS)
    path = report if report is not None else latest_run()
    if config:
        typer.echo(label_studio_config(read_metadata(path).dataset.classes), nl=False)
        return
    kw = dict(category=category, top=top)
    if fmt == "label-studio":
        kw.update(image_url=image_url, from_name=from_name, to_name=to_name)
    if out is not None:
        dest = write_export(path, out, fmt, **kw)
        console.print(f"wrote [bold]{safe(dest)}[/]", highlight=False)
        return
    if fmt == "label-studio":
        typer.echo(tasks_json(label_studio_tasks(path, **kw), indent=1))
    else:
        typer.echo(suspects_csv(path, **kw), nl=False)
