"""memscan apply: a reviewer's decisions applied to a new manifest (the dataset itself is never touched)."""
from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .console import console, safe


@app.command("apply")
def apply_cmd(
    report: Path = typer.Argument(..., help="Run folder or report.parquet the decisions were made on."),
    decisions: Path = typer.Argument(..., help="decisions.csv (from report.html): path, given, decision "
                                     "(keep|relabel|remove), new_label, note."),
    out: Path = typer.Option(..., "--out", "-o", help="The cleaned manifest to write (.csv, or .parquet for a "
                             "dataset whose images live in a Parquet file); 'memscan run' reads it directly."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (as "
                                 "memscan.decisions.apply_decisions returns it)."),
):
    """Write the dataset as a manifest with the relabels applied and the removals left out."""
    from ..decisions import apply_decisions
    from ..files import dumps
    res = apply_decisions(report, decisions, out)
    if as_json:
        typer.echo(dumps(res.__dict__ | {"out": str(res.out)}))
        return
    console.print(f"wrote [bold]{safe(res.out)}[/]: {res.samples} samples ({res.relabelled} relabelled, "
                  f"{res.removed} removed, {res.kept} kept as they were)", highlight=False)
    for change, n in sorted(res.changes.items(), key=lambda kv: -kv[1])[:10]:
        console.print(f"  {n:5d}  {safe(change)}", highlight=False)
    if res.left_out:   # e.g. a name that is not UTF-8: the cleaned manifest cannot list it
        console.print(f"[yellow]warning:[/] {len(res.left_out)} image file(s) of the dataset could not be listed and "
                      f"are not in the manifest, e.g. '{safe(res.left_out[0]['path'])}' "
                      f"({safe(res.left_out[0]['error'])})", highlight=False)
    if res.unmatched:
        console.print(f"[yellow]warning:[/] {len(res.unmatched)} decision(s) name no sample of the dataset (removed "
                      f"since the run?), e.g. '{safe(res.unmatched[0])}'", highlight=False)
    console.print(f"next: memscan run {safe(res.out)}", highlight=False)
