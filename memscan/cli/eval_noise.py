"""memscan eval-noise: inject label noise with known truth, run, and measure detection."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from . import app
from .console import RunProgress, console
from .options import config_from_options, run_options
from ..errors import ConfigError


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    return seeds


def _fmt(v):
    if isinstance(v, dict):
        return f"{v['mean']:.3f} ± {v['std']:.3f}" if v.get("std") else f"{v['mean']:.3f}"
    return f"{v:.3f}"


def print_eval(res: dict) -> None:
    per = res.get("per_seed")
    title = (f"detection of {res.get('kind', 'known')} label noise" +
             (f" at rate {res['rate']}" if "rate" in res else "") +
             (f" over seeds {res['seeds']}" if res.get("seeds") and len(res["seeds"]) > 1 else ""))
    t = Table(title=title, title_justify="left")
    for c in ("score", "AUROC", "AP", "precision@k", "TPR@5%FPR"):
        t.add_column(c, justify="right" if c != "score" else "left")
    for name, m in res["scores"].items():
        t.add_row(name, _fmt(m["auroc"]), _fmt(m["ap"]), _fmt(m["precision_at_k"]), _fmt(m["tpr_at_5fpr"]))
    console.print(t)
    c = res["category"]
    console.print(f"category 'mislabeled': precision {_fmt(c['precision'])}, recall {_fmt(c['recall'])}; "
                  f"estimated noise fraction {_fmt(c['estimated_noise_fraction'])} vs true "
                  f"{_fmt(c['true_noise_fraction'])}")
    if per:
        console.print(f"stopped after {[r['stop']['epochs_trained'] for r in per]} epochs; runs: "
                      + ", ".join(r["run"] for r in per))


@app.command("eval-noise")
@run_options
def eval_noise_cmd(
    dataset: Optional[Path] = typer.Argument(None, help="Image folder or manifest (its labels taken as clean)."),
    rate: float = typer.Option(0.2, help="Fraction of labels to flip, in (0, 1)."),
    kind: str = typer.Option("symmetric", help="symmetric | pairflip | instance (image-dependent: flips the images a "
                             "reference model finds ambiguous, into the classes they resemble; the draw depends on the "
                             "machine's arithmetic as well as the seed: truth.csv keeps it) | matrix:FILE (K x K "
                             "CSV, rows sum to 1)."),
    seeds: str = typer.Option("0", help="Comma-separated seeds; several give mean ± std."),
    from_run: Optional[Path] = typer.Option(None, "--from-run", help="Score an existing run instead of training."),
    truth: Optional[Path] = typer.Option(None, help="CSV: path + flipped (1/0) or true_label, for real known errors."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the runs and eval.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing run folders."),
    cache_dir: Optional[Path] = typer.Option(None, help="Decode cache (default: ~/.cache/memscan)."),
    encoding: Optional[str] = typer.Option(None, help="Text encoding of a CSV/TSV manifest (default: UTF-8)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (as the API returns it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    run_opts: dict = None,
):
    """Measure how well memscan finds injected (or known) label errors: AUROC, AP, precision@k."""
    from ..eval_noise import eval_noise, evaluate_report_with_truth
    from ..report import resolve_report_path
    if from_run is not None or (truth is not None and dataset is None):
        if from_run is None or truth is None:
            raise ConfigError("scoring an existing run needs both --from-run RUN_DIR and --truth FILE")
        report = resolve_report_path(from_run)
        res = evaluate_report_with_truth(report, truth)
        _save_eval(report.parent, res)
    elif dataset is None:
        raise ConfigError("missing DATASET: pass an image folder or manifest, or --from-run RUN_DIR --truth FILE")
    elif truth is not None:
        from .. import pipeline
        with RunProgress(quiet=quiet or as_json) as prog:
            r = pipeline.run(dataset, config_from_options(run_opts), out=out, overwrite=overwrite,
                             cache_dir=cache_dir, progress=prog, encoding=encoding)
        res = evaluate_report_with_truth(r.report_path, truth)
        _save_eval(r.out_dir, res)
    else:
        if not 0 < rate < 1:
            raise ConfigError(f"--rate {rate} must be strictly between 0 and 1")
        with RunProgress(quiet=quiet or as_json) as prog:
            res = eval_noise(dataset, config_from_options(run_opts), rate=rate, kind=kind, seeds=_seeds(seeds),
                             out=out, overwrite=overwrite, cache_dir=cache_dir, progress=prog, encoding=encoding)
    if as_json:
        typer.echo(json.dumps(res, indent=1))
    else:
        print_eval(res)


def _save_eval(run_dir: Path, res: dict) -> None:
    """eval.json (the latest scoring) goes into a memscan run folder only: a report elsewhere may sit
    among files memscan did not write."""
    from ..files import write_json_atomic
    from ..run_folder import RunFolder
    if RunFolder.is_run(run_dir):
        write_json_atomic(RunFolder(run_dir).eval_json, res)
