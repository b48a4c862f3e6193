"""memscan report / memscan plot: the self-contained HTML review page, or the plots alone as PNG."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from . import app
from .console import console
from .outputs import write_report_html

REFERENCE_HELP = ("A 'memscan memorization' estimate of the same dataset (its folder or memorization.parquet): adds "
                  "the run's scores against it (figure 'reference', agreement table).")


@app.command("report")
def report_cmd(
    run_dir: Optional[Path] = typer.Argument(None, help="Run folder or report.parquet (default: latest run)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default: RUN_DIR/report.html)."),
    per_category: int = typer.Option(300, help="Most suspicious samples shown per flagged category."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
    reference: Optional[Path] = typer.Option(None, "--reference", help=REFERENCE_HELP),
):
    """Write report.html: thumbnails of the flagged samples, training plots, per-class summary, config."""
    from ..run_folder import latest_run
    res = write_report_html(run_dir if run_dir is not None else latest_run(), out, per_category=per_category,
                            quiet=as_json, reference=reference)
    if as_json:
        typer.echo(json.dumps({"html": str(res.path), "images": res.images, "missing": res.missing,
                               "warning": res.warning, "reference": None if reference is None else str(reference)},
                              indent=1))
        return
    console.print(f"wrote [bold]{res.path}[/] ({res.images} samples in the gallery"
                  + (f", {len(res.missing)} images missing" if res.missing else "") + ")", highlight=False)


@app.command("plot")
def plot_cmd(
    run_dir: Optional[Path] = typer.Argument(None, help="Run folder or report.parquet (default: latest run)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the PNG files (default: "
                                       "RUN_DIR/plots)."),
    dpi: int = typer.Option(120, help="Resolution of the PNG files."),
    reference: Optional[Path] = typer.Option(None, "--reference", help=REFERENCE_HELP + " Writes reference.png."),
):
    """Write the run's plots as PNG: weight norms, mean sample gradient, accuracy, CSG distribution, per class,
    CSG against learning time (and, with --reference, the scores against reference memorization)."""
    from ..dataset_guard import guard_for_report
    from ..errors import ConfigError
    from ..plots import save_pngs
    from ..report import resolve_report_path
    from ..run_folder import RunFolder, latest_run
    if not 10 <= dpi <= 1200:
        raise ConfigError(f"--dpi {dpi} must be between 10 and 1200 (default 120)")
    rpath = resolve_report_path(run_dir if run_dir is not None else latest_run())
    dest = out if out is not None else RunFolder(rpath.parent).plots
    if out is None:
        RunFolder.check_subfolder(dest)
    guard_for_report(rpath).check_folder(dest)
    paths = save_pngs(rpath, dest, dpi=dpi, reference=reference)
    for p in paths:
        typer.echo(str(p))   # paths memscan chose (RUN/plots or --out plus fixed names)
