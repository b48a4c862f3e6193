"""memscan rank: show the ranking of a run's report (table, csv, json or bare paths)."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from .console import console
from ..errors import check_choice

FORMATS = ("table", "csv", "json", "paths")


@app.command("rank")
def rank_cmd(
    report: Optional[Path] = typer.Argument(None, help="Run folder or report.parquet (default: latest run under "
                                            "./memscan-runs)."),
    top: int = typer.Option(500, "--top", "-n", help="How many rows."),
    by: str = typer.Option("mislabel", help="mislabel | memorization | atypicality | csg | sgal | csl | aum | "
                           "p_given | forgetting | learning_time."),
    category: Optional[str] = typer.Option(None, help="Only this category: mislabeled | atypical | memorized | ok."),
    class_name: Optional[str] = typer.Option(None, "--class", help="Only samples whose given label is this class."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json | paths."),
    summary: bool = typer.Option(False, "--summary", help="Per-class health summary instead of the ranking."),
):
    """Rank the samples of a report, most suspicious first."""
    from ..rank import class_summary, latest_run, load_frame, needed_columns, ranked_records, select
    check_choice("--format", fmt, FORMATS)
    path = report if report is not None else latest_run()
    if summary:
        rows = class_summary(load_frame(path, ["label_name", "pred_name", "category", "mislabel_score",
                                               "memorization_score"]))
        if fmt == "json":
            typer.echo(json.dumps(rows, indent=1))
        elif fmt == "csv":
            _csv(rows)
        else:
            t = Table(title=f"per-class summary — {path}", title_justify="left")
            for c in ("class", "samples", "mislabeled", "atypical", "memorized", "accuracy", "most predicted instead",
                      "mean mislabel score"):
                t.add_column(c)
            for r in rows:
                t.add_row(r["class"], str(r["samples"]), str(r["mislabeled"]), str(r["atypical"]), str(r["memorized"]),
                          f"{r['accuracy']:.3f}", r["most_predicted_instead"] or "-", f"{r['mean_mislabel_score']:.3f}")
            console.print(t)
        return
    if fmt == "json":
        typer.echo(json.dumps(ranked_records(path, by=by, top=top, category=category, class_name=class_name),
                              indent=1))
        return
    if fmt == "paths":
        df = select(load_frame(path, needed_columns(by)), by=by, top=top, category=category, class_name=class_name)
        from ..report import read_metadata
        root = Path(read_metadata(path)["dataset"]["location"])
        root = root.parent if root.is_file() else root
        for p in df["path"]:
            typer.echo(str(root / p))
        return
    rows = ranked_records(path, by=by, top=top, category=category, class_name=class_name)
    if fmt == "csv":
        _csv(rows)
        return
    t = Table(title=f"{len(rows)} samples by {by} — {path}", title_justify="left", expand=False)
    for c, kw in (("rank", {"justify": "right"}), ("path", {"overflow": "fold", "ratio": 3}), ("given", {}),
                  ("predicted", {}), ("p", {"justify": "right"}), (by, {"justify": "right"}), ("category", {})):
        t.add_column(c, **kw)
    for r in rows:
        t.add_row(str(r["rank"]), escape(r["path"]), escape(str(r["label_name"])), escape(str(r["pred_name"])), f"{r['p_pred']:.2f}",
                  f"{r['score']:.4g}", r["category"])
    console.print(t)


def _csv(rows):
    if not rows:
        return
    w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
