"""memscan run: train on a labelled image folder, record signals, write the ranked report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from . import app
from .console import RunProgress, console
from ..config import RunConfig

DEMO_CONFIG = dict(image_size=16, augment="crop", batch_size=64, max_epochs=40, lr=0.05)


def config_from_options(o: dict) -> RunConfig:
    """Options shared by run and eval-noise -> RunConfig (validated there, once)."""
    augment = "none" if o.pop("no_augment", False) else o.pop("augment")
    return RunConfig(augment=augment, **o)





def print_summary(s: dict, title: str = "memscan run") -> None:
    console.print(f"\n[bold]{title}[/] — {s['n']} images, {s['classes']} classes")
    console.print(f"stopped after {s['epochs_trained']} epochs: {s['stop_reason']}")
    console.print(f"accuracy on the given labels at the stop point: {s['stop_acc']:.3f}")
    cats = s["categories"]
    console.print("flagged: " + ", ".join(f"[bold]{cats[c]}[/] {c}" for c in ("mislabeled", "atypical", "memorized"))
                  + f" (ok: {cats['ok']})")
    if s["skipped"]:
        console.print(f"[yellow]{len(s['skipped'])} unreadable images skipped[/], e.g. {s['skipped'][0]['path']} "
                      f"({s['skipped'][0]['error']})")
    t = Table(title="top 10 suspects (by mislabel_score)", title_justify="left")
    for col in ("rank", "path", "given", "predicted", "p", "score", "category"):
        t.add_column(col, overflow="fold")
    for r in s["top"]:
        t.add_row(str(r["rank"]), r["path"], r["label"], r["pred"], f"{r['p_pred']:.2f}",
                  f"{r['mislabel_score']:.3f}", r["category"])
    console.print(t)
    console.print(f"report: [bold]{s['report']}[/]   next: memscan rank {s['out_dir']}")


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    dataset: Optional[Path] = typer.Argument(None, help="Image folder (one subfolder per class) or a "
                                             ".csv/.parquet manifest."),
    demo: bool = typer.Option(False, "--demo", help="Run on the embedded demo: scikit-learn's digits with 10% "
                              "of labels flipped (no download), and score the detection."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder [default: ./memscan-runs/<name>-<time>]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    model: str = typer.Option("memscan-cnn", help="Built-in (memscan-cnn, -m, -l) or any timm model name."),
    weights: Optional[str] = typer.Option(None, help="Local pretrained weights (.safetensors or state dict); "
                                          "the classifier head is replaced for your classes."),
    pretrained: bool = typer.Option(False, help="timm hub weights (needs network)."),
    image_size: Optional[int] = typer.Option(None, help="Pixels [default: native size when all agree]."),
    augment: str = typer.Option("crop-flip", help="crop-flip | crop | none (batched on the device)."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Same as --augment none."),
    optimizer: str = typer.Option("sgd", help="sgd (nesterov momentum) | adamw."),
    lr: float = typer.Option(0.05, help="Peak learning rate."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(5e-4, help="Weight decay. The weight-norm peak that stops training "
                                       "exists because of it: with 0 the norm only grows."),
    batch_size: int = typer.Option(256, help="Images per step."),
    schedule: str = typer.Option("constant", help="constant | cosine | onecycle (after warm-up)."),
    warmup_epochs: float = typer.Option(1.0, help="Linear warm-up, epochs."),
    max_epochs: int = typer.Option(30, help="Upper bound on epochs."),
    signal: str = typer.Option("inloop", help="inloop: input gradient from the training step (free); exact: "
                               "an extra eval-mode pass per epoch (exact per-sample, ~+35% time)."),
    stop: str = typer.Option("peak", help="peak: stop once the stop curve's peak is confirmed; none: "
                             "train to --max-epochs."),
    stop_signal: str = typer.Option("weight-norm", help="weight-norm (conv/linear weights) | total-norm | "
                                    "grad-mean | rank-stability."),
    patience: int = typer.Option(3, help="Epochs the smoothed curve must stay below its peak."),
    smoothing: int = typer.Option(3, help="Moving-average window of the stop curve, epochs."),
    min_epochs: int = typer.Option(3, help="Never stop before this many epochs."),
    seed: int = typer.Option(0, help="Seed: same data + seed on CPU gives the same report."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16 (autocast; input gradients in fp32)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="[default: on for conv nets]"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    workers: Optional[int] = typer.Option(None, help="Decode threads [default: all cores]."),
    strict: bool = typer.Option(False, "--strict", help="Fail on unreadable images instead of skipping them."),
    cache_dir: Optional[Path] = typer.Option(None, help="Decode cache [default: ~/.cache/memscan]."),
    val: Optional[Path] = typer.Option(None, help="Held-out labelled set: adds validation loss/accuracy per epoch."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (as memscan.run returns it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    """Train (or fine-tune) on DATASET, record CSG every step, stop at the weight-norm peak, write the report."""
    from ..errors import ConfigError
    from ..pipeline import run
    opts = dict(model=model, weights=weights, pretrained=pretrained, image_size=image_size, augment=augment,
                no_augment=no_augment, optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
                batch_size=batch_size, schedule=schedule, warmup_epochs=warmup_epochs, max_epochs=max_epochs,
                signal=signal, stop=stop, stop_signal=stop_signal, patience=patience, smoothing=smoothing,
                min_epochs=min_epochs, seed=seed, device=device, precision=precision, channels_last=channels_last,
                compile=compile, workers=workers, strict=strict)
    truth = None
    if demo:
        if dataset is not None:
            raise ConfigError("pass either DATASET or --demo, not both")
        from ..data.demo import build_demo
        dataset, truth = build_demo()
        for k, v in DEMO_CONFIG.items():  # demo defaults, unless the user set the option
            if ctx.get_parameter_source(k).name == "DEFAULT":
                opts[k] = v
        if out is None:
            from ..pipeline import default_out_dir
            out = default_out_dir(Path("demo"))
    elif dataset is None:
        raise ConfigError("missing DATASET: pass an image folder or manifest, or --demo for the embedded example")
    cfg = config_from_options(opts)
    with RunProgress(quiet=quiet or as_json) as prog:
        res = run(dataset, cfg, out=out, overwrite=overwrite, cache_dir=cache_dir, val_dataset=val, progress=prog)
    if truth is not None:
        res.summary["demo"] = demo_evaluation(res, truth)
    if as_json:
        typer.echo(json.dumps(res.summary, indent=1, default=str))
        return
    print_summary(res.summary)
    if truth is not None:
        d = res.summary["demo"]
        console.print(f"\n[bold]demo check[/]: {d['flipped']} labels were flipped on purpose. mislabel_score "
                      f"AUROC {d['auroc']:.3f}; {d['found_in_top_k']} of them are in the top {d['flipped']} "
                      f"(precision@k {d['precision_at_k']:.2f}); category 'mislabeled' precision "
                      f"{d['flag_precision']:.2f}, recall {d['flag_recall']:.2f}.")


def demo_evaluation(res, truth_file) -> dict:
    from ..data.demo import read_truth
    from ..evaluate import detection_metrics, flag_metrics
    from ..report import read_report
    df = read_report(res.report_path).to_pandas()
    flipped = read_truth(truth_file, df["path"].tolist())
    m = detection_metrics(df["mislabel_score"].to_numpy(), flipped)
    f = flag_metrics(df["category"].to_numpy() == "mislabeled", flipped)
    return {"flipped": int(flipped.sum()), "auroc": m["auroc"], "ap": m["ap"],
            "precision_at_k": m["precision_at_k"], "found_in_top_k": int(round(m["precision_at_k"] * m["k"])),
            "flag_precision": f["precision"], "flag_recall": f["recall"]}
