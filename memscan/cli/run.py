"""memscan run: train on a labelled image folder, record signals, write the ranked report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from . import app
from .console import RunProgress, console, exit_code_if_reader_gone, safe
from .options import config_from_options, run_options, user_set

# 1,797 digits make 28 steps an epoch: twice the default rate learns enough in 5 epochs (178 of 180 flipped
# labels in the top 180, against 169 in 4 epochs at the default; BENCHMARKS.md §7)
DEMO_CONFIG = dict(image_size=16, augment="crop", max_epochs=40, lr=0.025)


def print_summary(s: dict, title: str = "memscan run") -> None:
    console.print(f"\n[bold]{title}[/] — {s['n']} images, {s['classes']} classes")
    console.print(f"stopped after {s['epochs_trained']} epochs: {safe(s['stop_reason'])}", highlight=False)
    console.print(f"accuracy on the given labels at the stop point: {s['stop_acc']:.3f}")
    for w in s.get("warnings") or ():
        console.print(f"[yellow]caution:[/] {safe(w)}", highlight=False)
    cats = s["categories"]
    console.print("flagged: " + ", ".join(f"[bold]{cats[c]}[/] {c}" for c in ("mislabeled", "atypical", "memorized"))
                  + f" (ok: {cats['ok']})")
    if s["skipped"]:
        console.print(f"[yellow]{len(s['skipped'])} unreadable images skipped[/], e.g. {safe(s['skipped'][0]['path'])} "
                      f"({safe(s['skipped'][0]['error'])})", highlight=False)
    test = (s.get("audit") or {}).get("test") or {}
    if test.get("skipped"):   # their leaks were not checked: say so, as for unreadable training images
        console.print(f"[yellow]{test['skipped']} unreadable test images skipped[/]: the leak check does not cover them",
                      highlight=False)
    t = Table(title="top 10 suspects (by mislabel_score)", title_justify="left")
    for col in ("rank", "path", "given", "predicted", "p", "score", "category"):
        t.add_column(col, overflow="fold")
    for r in s["top"]:
        t.add_row(str(r["rank"]), safe(r["path"]), safe(r["label"]), safe(r["pred"]), f"{r['p_pred']:.2f}",
                  f"{r['mislabel_score']:.3f}", r["category"])
    console.print(t)
    console.print(f"report: [bold]{safe(s['report'])}[/]   next: memscan rank {safe(s['out_dir'])}", highlight=False)


@app.command("run")
@run_options
def run_cmd(
    ctx: typer.Context,
    dataset: Optional[Path] = typer.Argument(None, help="Image folder (one subfolder per class) or a "
                                             ".csv/.parquet manifest."),
    demo: bool = typer.Option(False, "--demo", help="Run on the embedded demo: scikit-learn's digits with 10% "
                              "of labels flipped (no download), and score the detection."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default: a new folder in "
                                       "./memscan-runs, named for the dataset and the time)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out from its last "
                                "epoch checkpoint (its saved options apply; same report as an uninterrupted run)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Decode cache (default: ~/.cache/memscan)."),
    val: Optional[Path] = typer.Option(None, help="Held-out labelled set: adds validation loss/accuracy per epoch."),
    test: Optional[Path] = typer.Option(None, "--test", help="Test split (folder or manifest) to check for leakage: "
                                        "its images that duplicate training images go to leaks.parquet."),
    path_column: Optional[str] = typer.Option(None, help="Manifest column holding image paths (default: path)."),
    encoding: Optional[str] = typer.Option(None, help="Text encoding of a CSV/TSV manifest (default: UTF-8), "
                                           "e.g. latin-1."),
    label_column: Optional[str] = typer.Option(None, help="Manifest column holding labels (default: label_name "
                                               "or label)."),
    check: Optional[List[str]] = typer.Option(None, "--check", metavar="<spec>", help="Gate the report after the "
                                              "run: KEY=VALUE pairs joined by commas, e.g. max-mislabeled=0.02, "
                                              "max-count=50 or class-max=cat:0.05 (keys as in 'memscan check'); "
                                              "exit 1 when it fails."),
    html: bool = typer.Option(False, "--html", help="Also write report.html (thumbnails, plots) in the run folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (as memscan.run returns it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    run_opts: dict = None,
):
    """Train on DATASET, record CSG every step, stop at the weight-norm peak or once the suspects settle, report."""
    from ..errors import ConfigError
    from ..pipeline import run
    opts = dict(run_opts)
    truth = None
    if demo:
        if dataset is not None:
            raise ConfigError("pass either DATASET or --demo, not both")
        dataset, truth, out = _demo_setup(ctx, opts, out)
    elif dataset is None:
        raise ConfigError("missing DATASET: pass an image folder or manifest, or --demo for the embedded example")
    cfg = _resumed_config(ctx, opts, out) if resume else config_from_options(opts)
    gate = _parse_gate(check, test, resume, out) if check else None
    with RunProgress(quiet=quiet or as_json) as prog:
        res = run(dataset, cfg, out=out, overwrite=overwrite, cache_dir=cache_dir, val_dataset=val, progress=prog,
                  path_column=path_column, label_column=label_column, encoding=encoding, resume=resume,
                  test_dataset=test if test is not None else _saved_test(out) if resume else None)
    if res.summary.get("rank", 0) != 0:   # torchrun: rank 0 reports
        return
    if truth is not None:
        res.summary["demo"] = demo_evaluation(res, truth)
    if html:
        from .outputs import write_report_html
        res.summary["html"] = str(write_report_html(res.out_dir, quiet=as_json).path)
    result = _gate_run(res, gate) if gate is not None else None
    if result is not None:
        exit_code_if_reader_gone(0 if result.passed else 1)
    if as_json:
        typer.echo(json.dumps(res.summary, indent=1, default=str))
        if result is not None and not result.passed:
            raise typer.Exit(1)
        return
    print_summary(res.summary)
    if html:
        console.print(f"html: [bold]{res.summary['html']}[/]")
    if truth is not None:
        _print_demo(res.summary["demo"])
    if result is not None:
        from .outputs import print_check
        console.print()
        raise typer.Exit(print_check(result))


def _demo_setup(ctx, opts: dict, out):
    """(dataset, truth file, run folder) of ``--demo``; its defaults go into ``opts`` unless the user set them."""
    from ..data.demo import build_demo
    dataset, truth = build_demo()
    for k, v in DEMO_CONFIG.items():
        if not user_set(ctx, k):
            opts[k] = v
    if out is None:
        from ..run_folder import default_run_path
        out = default_run_path(Path("demo"))
    return dataset, truth, out


def _parse_gate(check: List[str], test, resume: bool, out) -> dict:
    """``--check``, parsed and checked before training, so that a typo costs seconds, not the run."""
    from ..check import parse_spec
    from ..errors import ConfigError
    gate = parse_spec(check)
    if gate.get("max_leaks") is not None and test is None and not (resume and _saved_test(out)):
        raise ConfigError("--check max-leaks gates the leaks into a test set: add --test TEST_SET")
    if gate.get("baseline") is not None:
        from ..report import read_metadata
        read_metadata(gate["baseline"])
    return gate


def _print_demo(d: dict) -> None:
    console.print(f"\n[bold]demo check[/]: {d['flipped']} labels were flipped on purpose. mislabel_score "
                  f"AUROC {d['auroc']:.3f}; {d['found_in_top_k']} of them are in the top {d['flipped']} "
                  f"(precision@k {d['precision_at_k']:.2f}); category 'mislabeled' precision "
                  f"{d['flag_precision']:.2f}, recall {d['flag_recall']:.2f}.")


def _resumed_config(ctx, opts: dict, out):
    """The interrupted run's saved options, with those the user gave again on top."""
    from ..config import RunConfig
    from ..errors import ConfigError
    from ..run_folder import RunFolder
    if out is None:
        raise ConfigError("--resume needs --out: the folder of the interrupted run")
    args = RunFolder(out).load_args()
    _not_eval_noise(out, args)
    saved = args["config"]
    given = {k: v for k, v in opts.items() if user_set(ctx, k)}
    if "no_augment" in given:
        given["augment"] = "none" if given.pop("no_augment") else saved["augment"]
    return RunConfig.from_dict({**saved, **given})


def _saved_test(out):
    from ..run_folder import RunFolder
    return RunFolder(out).load_args().get("test_dataset") if out is not None else None


def _gate_run(res, gate: dict):
    """``run --check``: the gate's result, written as check.json/.xml/.md in the run folder."""
    from ..check import check_report
    from ..files import write_json_atomic
    from ..run_folder import RunFolder
    from .outputs import check_ci_paths, write_ci_files
    result = check_report(res.report_path, **gate)
    folder = RunFolder(res.out_dir)
    write_json_atomic(folder.check_file("check.json"), result.to_dict())
    check_ci_paths(res.report_path)   # $GITHUB_STEP_SUMMARY, if set, lies outside the dataset
    write_ci_files(result, junit=folder.check_file("check.xml"), summary_md=folder.check_file("check.md"))
    res.summary["check"] = result.to_dict()
    return result


def _not_eval_noise(out, args: dict) -> None:
    from ..errors import ConfigError
    if args.get("relabelled"):
        raise ConfigError(f"'{out}' was made by eval-noise (labels changed in memory); rerun eval-noise instead")


@app.command("resume")
def resume_cmd(
    run_dir: Path = typer.Argument(..., help="Folder of an interrupted 'memscan run'."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    """Continue an interrupted run from its last epoch checkpoint, with the options it was started with."""
    from ..config import RunConfig
    from ..pipeline import run
    from ..run_folder import RunFolder
    a = RunFolder(run_dir).load_args()
    _not_eval_noise(run_dir, a)
    with RunProgress(quiet=quiet or as_json) as prog:
        res = run(a["dataset"], RunConfig.from_dict(a["config"]), out=run_dir, cache_dir=a["cache_dir"],
                  val_dataset=a["val_dataset"], progress=prog, path_column=a["path_column"],
                  label_column=a["label_column"], encoding=a.get("encoding"), resume=True,
                  test_dataset=a.get("test_dataset"))
    if res.summary.get("rank", 0) != 0:
        return
    if as_json:
        typer.echo(json.dumps(res.summary, indent=1, default=str))
        return
    print_summary(res.summary)


def demo_evaluation(res, truth_file) -> dict:
    from ..eval_noise import evaluate_report_with_truth
    r = evaluate_report_with_truth(res.report_path, truth_file)
    m, f = r["scores"]["mislabel_score"], r["category"]
    return {"flipped": r["flipped"], "auroc": m["auroc"], "ap": m["ap"],
            "precision_at_k": m["precision_at_k"], "found_in_top_k": int(round(m["precision_at_k"] * m["k"])),
            "flag_precision": f["precision"], "flag_recall": f["recall"]}
