"""memscan memorization: the reference memorization estimate (Feldman & Zhang), and a run measured against it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from . import app
from .console import RunProgress, console, safe
from ..files import dumps
from ..memorization_run import DEFAULT_EPOCHS, DEFAULT_MODELS, DEFAULT_SUBSET

#: split-half reliability (Spearman-Brown, all models) below which the summary suggests more models
LOW_RELIABILITY = 0.75


@app.command("memorization")
def memorization_cmd(
    dataset: Optional[Path] = typer.Argument(None, help="Image folder or manifest to estimate memorization on."),
    models: int = typer.Option(DEFAULT_MODELS, help="Models trained, each on a random --subset of the data."),
    subset: float = typer.Option(DEFAULT_SUBSET, help="Fraction of the samples each model trains on."),
    epochs: int = typer.Option(DEFAULT_EPOCHS, help="Epochs per model (memorization is measured on fitted models)."),
    schedule: str = typer.Option("cosine", help="Learning-rate schedule of each model: cosine fits to the end."),
    model: str = typer.Option("memscan-cnn", help="Architecture (as in 'memscan run')."),
    weights: Optional[str] = typer.Option(None, help="Local pretrained weights each model starts from."),
    stem: str = typer.Option("auto", help="memscan's CNNs from scratch: auto (= whiten) | whiten (a fixed, "
                             "whitened first layer) | learned, as in 'memscan run'."),
    image_size: Optional[int] = typer.Option(None, help="Pixels (default: native size when all agree)."),
    augment: str = typer.Option("crop-flip", help="crop-flip | crop | none."),
    lr: float = typer.Option(0.05, help="Peak learning rate (0.05 with the cosine schedule fitted 98% of a 1,400-image "
                             "CIFAR-10 subset in 30 epochs; BENCHMARKS.md §12)."),
    batch_size: int = typer.Option(64, help="Images per step."),
    seed: int = typer.Option(0, help="Seed of the subsets and of each model (model k: seed + k)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16."),
    workers: Optional[int] = typer.Option(None, help="Decode threads (default: all cores)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the models and memorization.parquet "
                                       "(default: memscan-runs/<dataset>-<time>-memorization)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted estimate in --out, or add models to a "
                                "finished one with a larger --models (finished models are kept)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the memscan files in an existing --out."),
    cache_dir: Optional[Path] = typer.Option(None, help="Decode cache (default: ~/.cache/memscan)."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="A run folder or report.parquet: print how its "
                                           "columns agree with the reference (DATASET is then the reference folder "
                                           "or memorization.parquet)."),
    level: float = typer.Option(0.5, help="With --compare: reference memorization above which a sample counts as "
                                "memorized for the categories' precision and recall."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (as the API returns it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    """Estimate how much each sample is memorized (K models on random subsets: in minus out), or compare a run."""
    from ..config import RunConfig
    from ..errors import ConfigError
    if dataset is None:
        raise ConfigError("missing DATASET: an image folder or manifest (or, with --compare, a memorization folder)")
    if compare is not None:
        from ..memorization_run import compare as compare_run
        res = compare_run(compare, dataset, level=level)
        typer.echo(dumps(res)) if as_json else print_compare(res)
        return
    from ..memorization_run import Plan, memorization
    cfg = RunConfig(model=model, weights=weights, stem=stem, image_size=image_size, augment=augment, lr=lr, batch_size=batch_size,
                    max_epochs=epochs, schedule=schedule, seed=seed, device=device, precision=precision,
                    workers=workers, stop="none", anneal_epochs=0)
    with RunProgress(quiet=quiet or as_json) as prog:
        res = memorization(dataset, cfg, Plan(models=models, subset=subset), out=out, overwrite=overwrite,
                           resume=resume, cache_dir=cache_dir, progress=prog)
    if res is None:   # a torchrun process other than rank 0
        return
    if as_json:
        typer.echo(dumps(res))
    else:
        print_estimate(res)


def print_estimate(res: dict) -> None:
    r = res["split_half"]
    console.print(f"{res['models']} models on {res['subset']:.0%} subsets, {res['epochs']} epochs each: "
                  f"accuracy {res['train_acc']:.3f} on their own subsets, {res['held_out_acc']:.3f} held out")
    console.print(f"reliability (split-half, Spearman-Brown for all models): Spearman {r['spearman_full']:.3f}, "
                  f"Pearson {r['pearson_full']:.3f}" + (f"; {res['no_estimate']} samples without an estimate (no "
                  "model on one side: add --models)" if res["no_estimate"] else ""), highlight=False)
    rho = r["spearman_full"]
    # a proxy cannot agree with the estimate beyond sqrt(rho); by Spearman-Brown twice the models give 2 rho / (1 + rho)
    if isinstance(rho, float) and rho == rho and rho < LOW_RELIABILITY:
        console.print(f"[yellow]low reliability: no column can agree with this estimate beyond about "
                      f"{max(rho, 0) ** 0.5:.2f}; twice the models should give {2 * rho / (1 + rho):.2f} "
                      f"(--resume --models {2 * res['models']} --out {safe(res['out_dir'])})[/]", highlight=False)
    t = Table(title="most memorized", title_justify="left")
    for c in ("path", "memorization", "± se", "p held out"):
        t.add_column(c, overflow="fold", justify="left" if c == "path" else "right")
    for row in res["top"]:
        t.add_row(safe(row["path"]), f"{row['memorization']:.3f}", f"{row['se']:.3f}", f"{row['p_out']:.3f}")
    console.print(t)
    console.print(f"written: {safe(res['file'])}", highlight=False)


def print_compare(res: dict) -> None:
    r = res.get("split_half") or {}
    console.print(f"{safe(res['run'])} against the reference ({res['matched']} samples matched by path; reference "
                  f"split-half Spearman {r.get('spearman_full', float('nan')):.3f})", highlight=False)
    t = Table(title="agreement with reference memorization", title_justify="left")
    for c in ("column", "Pearson", "Spearman", "cosine", "of ceiling √ρ"):
        t.add_column(c, justify="left" if c == "column" else "right")
    for row in res["agreement"]:
        frac = row["spearman_of_ceiling"]
        t.add_row(row["column"], f"{row['pearson']:.3f}", f"{row['spearman']:.3f}", f"{row['cosine']:.3f}",
                  "-" if frac is None else f"{frac:.2f}")
    console.print(t)
    for note in res.get("notes", ()):
        console.print(f"[yellow]note:[/] {safe(note)}", highlight=False)
    for cat, v in res["categories"].items():
        p = "-" if v["precision"] is None else f"{v['precision']:.2f}"
        rc = "-" if v["recall"] is None else f"{v['recall']:.2f}"
        ceiling = v.get("split_half_precision")
        console.print(f"'{cat}': {v['flagged']} flagged, precision {p}, recall {rc} against reference "
                      f"memorization > {v['level']} ({v['above_level']} samples)"
                      + ("" if ceiling is None else f"; half the reference's models, flagging as many, reach "
                                                    f"{ceiling:.2f} against the other half"))
