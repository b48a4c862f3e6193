"""memscan diff: what changed between two reports of the same dataset."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from . import app
from .console import console, safe


@app.command("diff")
def diff_cmd(
    old: Path = typer.Argument(..., help="Earlier run folder or report.parquet."),
    new: Path = typer.Argument(..., help="Later run folder or report.parquet of the same dataset."),
    top: int = typer.Option(20, help="Rows shown per list."),
    as_json: bool = typer.Option(False, "--json", help="Print the full comparison as JSON (as "
                                 "memscan.diff.diff_reports(...).to_dict() returns it)."),
):
    """New and resolved suspects, relabelled, added and removed samples between two reports."""
    from ..diff import diff_reports
    from ..errors import ConfigError
    if top < 0:
        raise ConfigError(f"--top {top} must be 0 or more")
    d = diff_reports(old, new)
    if as_json:
        typer.echo(json.dumps(d.to_dict(), indent=1))
        return
    c = d.counts()
    console.print(f"[bold]{safe(d.old)}[/] ({d.old_samples} samples, {d.old_suspects} suspects) -> "
                  f"[bold]{safe(d.new)}[/] ({d.new_samples} samples, {d.new_suspect_count} suspects)", highlight=False)
    console.print(f"new suspects [bold]{c['new_suspects']}[/], resolved {c['resolved_suspects']}, relabelled "
                  f"{c['relabelled']}, added {c['added']}, removed {c['removed']}", highlight=False)
    for title, rows, extra in (("new suspects", d.new_suspects, "was"),
                               ("resolved suspects", d.resolved_suspects, "was"),
                               ("relabelled", d.relabelled, "old_label")):
        if not rows:
            continue
        t = Table(title=f"{title} ({len(rows)}{', first ' + str(top) if len(rows) > top else ''})",
                  title_justify="left")
        for col in ("path", "label", extra.replace("_", " "), "predicted", "p", "mislabel_score", "now"):
            t.add_column(col, overflow="fold")
        for r in rows[:top]:
            t.add_row(safe(r["path"]), safe(str(r["label_name"])), safe(str(r.get(extra) or "-")),
                      safe(str(r["pred_name"])),
                      f"{r['p_pred']:.2f}", f"{r['mislabel_score']:.3f}",
                      "removed" if r.get("removed") else str(r["category"]))
        console.print(t)
