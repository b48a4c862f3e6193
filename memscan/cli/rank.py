"""memscan rank: show the ranking of a run's report (table, csv, json or bare paths)."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from . import app
from .console import console, safe
from ..errors import ConfigError, check_choice
from ..text import spreadsheet_safe

FORMATS = ("table", "csv", "json", "paths", "paths0")


@app.command("rank")
def rank_cmd(
    report: Optional[Path] = typer.Argument(None, help="Run folder or report.parquet (default: latest run under "
                                            "./memscan-runs)."),
    top: int = typer.Option(500, "--top", "-n", help="How many rows."),
    by: str = typer.Option("mislabel", help="mislabel | memorization | atypicality | csg | sgal | csl | aum | "
                           "p_given | forgetting | learning_time; beyond labels: blur | dark | bright | contrast | "
                           "information (nearly blank first) | duplicate (closest duplicates first)."),
    category: Optional[str] = typer.Option(None, help="Only this category: mislabeled | atypical | memorized | ok."),
    class_name: Optional[str] = typer.Option(None, "--class", help="Only samples whose given label is this class."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json | paths (one image file a line) | "
                            "paths0 (NUL-separated, for xargs -0: safe for any file name)."),
    nul: bool = typer.Option(False, "-0", help="Same as --format paths0."),
    raw_csv: bool = typer.Option(False, "--raw-csv", help="CSV cells exactly as in the report. By default a text "
                                 "cell starting with = + - @ tab or CR gets a leading ' so a spreadsheet shows it "
                                 "instead of running it as a formula."),
    summary: bool = typer.Option(False, "--summary", help="Per-class health summary instead of the ranking."),
    why: bool = typer.Option(True, "--why/--no-why", help="In the table, each flagged sample's reason under its "
                             "path (csv and json always carry the reason and the suggested label)."),
):
    """Rank the samples of a report, most suspicious first."""
    from ..files import dumps
    from ..rank import dataset_summary, ranked_records, sample_files
    from ..run_folder import latest_run
    fmt = "paths0" if nul else fmt
    check_choice("--format", fmt, FORMATS)
    path = report if report is not None else latest_run()
    if summary:
        s = dataset_summary(path)
        if fmt == "json":
            typer.echo(dumps(s))
        elif fmt == "csv":
            _csv(s["per_class"], raw=raw_csv)
        else:
            _summary_table(s["per_class"], path)
            if "label_health" in s:
                _health(s)
        return
    query = dict(by=by, top=top, category=category, class_name=class_name)
    if fmt in ("paths", "paths0"):
        _paths(sample_files(path, **query), nul=fmt == "paths0")
        return
    rows = ranked_records(path, **query)
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=1))
    elif fmt == "csv":
        _csv(rows, raw=raw_csv)
    else:
        _ranking_table(rows, by, path, why=why)


def _ranking_table(rows, by, path, *, why: bool = True):
    from ..rank import AUDIT_KEYS
    t = Table(title=f"{len(rows)} samples by {by} — {safe(path)}", title_justify="left", expand=False)
    for c, kw in (("rank", {"justify": "right"}), ("path", {"overflow": "fold", "ratio": 3}), ("given", {}),
                  ("predicted", {}), ("p", {"justify": "right"}), (by, {"justify": "right"}), ("category", {})):
        t.add_column(c, **kw)
    for r in rows:
        t.add_row(str(r["rank"]), safe(r["path"]), safe(r["label_name"]), safe(r["pred_name"]),
                  f"{r['p_pred']:.2f}", f"{r['score']:.4g}", safe(r["category"]))
    console.print(t)
    reasons = [(r["rank"], _audit_line(r) if by in AUDIT_KEYS else r.get("reason")) for r in rows if why]
    reasons = [(k, text) for k, text in reasons if text]
    if reasons:     # full-width lines under the table: a reason squeezed into a column is unreadable at 80
        g = Table.grid(padding=(0, 1))
        g.add_column(justify="right", style="bold")
        g.add_column(overflow="fold")
        for rank, text in reasons:
            g.add_row(str(rank), safe(text))
        console.print("[bold]why[/] (rank: reason; --no-why hides this)")
        console.print(g)


def _audit_line(r: dict) -> str:
    """What the data audit says of a sample, for a ranking by an image property or by duplicates."""
    parts = []
    if r.get("image_issue"):
        parts.append("image: " + r["image_issue"].replace(",", ", "))
    if r.get("duplicate_of"):
        parts.append(f"{r.get('duplicate_kind') or 'near'} duplicate of {r['duplicate_of']}"
                     + (" (the group carries two labels)" if r.get("duplicate_conflict") else ""))
    return "; ".join(parts)


def _summary_table(rows, path):
    t = Table(title=f"per-class summary — {safe(path)}", title_justify="left")
    # short headers: the table fits 80 columns with class names of a dozen characters
    for c in ("class", "samples", "mislab.", "atyp.", "memo.", "accuracy", "confused with", "mislabel score"):
        t.add_column(c, overflow="fold", justify="left" if c in ("class", "confused with") else "right")
    for r in rows:
        t.add_row(safe(r["class"]), str(r["samples"]), str(r["mislabeled"]), str(r["atypical"]), str(r["memorized"]),
                  f"{r['accuracy']:.3f}", safe(r["most_predicted_instead"] or "-"), f"{r['mean_mislabel_score']:.3f}")
    console.print(t)


def _health(s):
    console.print(f"label health [bold]{s['label_health']:.1%}[/]: about {s['estimated_errors']} of {s['samples']} "
                  "labels estimated wrong (confident learning's joint; --json for the noise matrix)", highlight=False)
    pairs = [p for p in s["overlapping_pairs"] if p["samples"] > 0][:5]
    if pairs:
        t = Table(title="class pairs that overlap most", title_justify="left")
        for c in ("classes", "samples", "a labelled, b true", "b labelled, a true"):
            t.add_column(c, justify="left" if c == "classes" else "right")
        for p in pairs:
            a, b = p["classes"]
            t.add_row(f"{safe(a)} / {safe(b)}", str(p["samples"]), str(p["given_a_true_b"]), str(p["given_b_true_a"]))
        console.print(t)


def _paths(files, *, nul: bool):
    from ..text import printable
    for f in files:
        if "\0" in f:       # no file system allows it, and it would split the entry for xargs -0
            raise ConfigError(f"the file name '{printable(f)}' contains a NUL character: it cannot name a file")
        if not nul and ("\n" in f or "\r" in f):    # one file would read as two lines to xargs or a shell loop
            raise ConfigError(f"the file name '{printable(f)}' contains a line break, so --format paths cannot "
                              "list it one per line; use --format paths0 (NUL-separated, for xargs -0)")
    sys.stdout.write("".join(f + ("\0" if nul else "\n") for f in files))
    sys.stdout.flush()


def _csv(rows, *, raw: bool = False):
    if not rows:
        return
    w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows if raw else ({k: spreadsheet_safe(v) for k, v in r.items()} for r in rows))
