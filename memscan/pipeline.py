"""``run()``: dataset -> decoded cache -> training with recording -> scores -> report folder.

The one function behind ``memscan run`` (and ``eval-noise``). Progress reaches the caller through
``progress(event, **info)``; nothing here prints.
"""
from __future__ import annotations

import json
import os
import re
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from . import __version__
from .config import RunConfig
from .data import load_images, load_index
from .data.cache import memory_budget
from .data.loader import InMemorySource, channel_stats
from . import distributed
from .errors import ConfigError, Interrupted, OutputError, OutputExistsError, TrainingError
from .files import TMP_NAME, write_atomic_with
from .models import create_model, is_conv_net
from .report import build_table, write_atomic
from .scores import CATEGORIES, accumulate, compute_scores
from .signals import Recorder
from .train import fit, predict_probs, resolve_device, resolve_precision
from .trajectories import read_epochs, write_epoch


@dataclass
class RunResult:
    out_dir: Path
    report_path: Path
    summary: dict
    scores: dict = field(repr=False, default_factory=dict)


def default_out_dir(dataset: Path, base: Path | None = None) -> Path:
    name = Path(dataset).resolve().name or "dataset"
    if Path(dataset).is_file():
        name = Path(dataset).stem
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return (base or Path("memscan-runs")) / f"{name}-{stamp}"


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_out_dir(out: Path, dataset_root: Path, *, overwrite: bool) -> Path:
    """Refuse a bad output folder before any work is done; nothing is created or deleted here."""
    out = Path(out)
    if _inside(out, dataset_root):
        raise ConfigError(f"--out '{out}' is inside the dataset folder '{dataset_root}'; memscan never writes "
                          "there: choose an output folder outside it")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"output folder '{out}' already exists; pass --overwrite to replace it or "
                                    "--out a new folder")
        if not (out / "run.json").exists() and not (out / "report.parquet").exists():
            raise OutputExistsError(f"output folder '{out}' exists and is not a memscan run; refusing to "
                                    "overwrite it: choose another --out")
    return out


def create_out_dir(out: Path) -> Path:
    """Replace an earlier run checked by ``check_out_dir`` and create the folder."""
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _default_size(model_name: str, model) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg and not model_name.startswith("memscan-"):
        return int(cfg["input_size"][-1])
    return 32


CHECKPOINT = "checkpoint.pt"
RUN_ARGS = "run-args.json"


def save_checkpoint(state: dict, dest: Path) -> None:
    """Write then rename: a crash or a full disk never leaves a corrupt checkpoint, and the previous
    one survives until the new one is complete."""
    try:
        write_atomic_with(dest, lambda tmp: torch.save(state, tmp))
    except OSError as e:
        prev = f"the previous checkpoint '{dest}' is intact" if dest.exists() else "no earlier checkpoint exists"
        raise OutputError(f"cannot write checkpoint '{dest}' ({e.strerror or e}); {prev}: free disk space, then "
                          f"'memscan resume {dest.parent}'") from None


PROBS_IN_RAM = 2 ** 30   # bytes of class probabilities kept in RAM; above: a temporary file, memory-mapped


@contextmanager
def probability_buffer(out: Path, n: int, k: int, memory_bytes: int):
    """Where the prediction pass writes the [N, K] fp32 probabilities: RAM when they are small, else a
    memory-mapped temporary file in the run folder (1.28 M x 1000 classes = 5 GB), so that memscan's
    RAM stays O(N). The file is allocated up front (a full disk fails here, not with SIGBUS mid-pass),
    named like an interrupted atomic write so that ``memscan resume`` cleans it after a crash, and
    removed afterwards."""
    size = n * k * 4
    if size <= min(PROBS_IN_RAM, memory_bytes):
        yield np.empty((n, k), dtype=np.float32)
        return
    path = out / f"probs.f32.tmp{os.getpid()}"
    try:
        with open(path, "wb") as f:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(f.fileno(), 0, size)
            else:  # pragma: no cover - macOS/Windows
                f.truncate(size)
        buf = np.memmap(path, dtype=np.float32, mode="r+", shape=(n, k))
    except OSError as e:
        path.unlink(missing_ok=True)
        raise OutputError(f"cannot allocate {size / 2**30:.1f} GiB for the class probabilities in '{out}' "
                          f"({e.strerror or e}): free disk space, then 'memscan resume {out}'") from None
    try:
        yield buf
    finally:
        del buf
        path.unlink(missing_ok=True)


def load_checkpoint(out: Path) -> dict | None:
    p = Path(out) / CHECKPOINT
    if not p.exists():
        return None
    try:
        # our own file (written by save_checkpoint): it holds the stop rule's Python state
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise OutputError(f"checkpoint '{p}' is unreadable ({type(e).__name__}); delete it to restart the run "
                          "from scratch with --overwrite") from None


def _check_resumable(out: Path, cfg: RunConfig, fingerprint: str):
    """The checkpoint of ``out``, or None to start over; refuses one of another config or dataset."""
    if not out.exists():
        raise ConfigError(f"--resume: no run folder '{out}'; pass the --out of the interrupted run")
    if (out / "report.parquet").exists() and not (out / CHECKPOINT).exists():
        raise OutputExistsError(f"run '{out}' already finished (report.parquet is there); nothing to resume")
    for leftover in [*out.glob("*.tmp*"), *out.glob("trajectories/*.tmp*")]:   # writes cut short by the crash
        if TMP_NAME.search(leftover.name):
            leftover.unlink(missing_ok=True)
    ck = load_checkpoint(out)
    if ck is None:
        return None
    saved = ck["config"]
    diff = sorted(k for k, v in cfg.to_dict().items() if saved.get(k) != v)
    if diff:
        raise ConfigError(f"--resume: options differ from the interrupted run in {', '.join(diff)} (was: "
                          + ", ".join(f"{k}={saved.get(k)!r}" for k in diff)
                          + "); drop them, or use 'memscan resume RUN' which reuses the saved options")
    if ck.get("fingerprint") != fingerprint:
        raise ConfigError(f"--resume: the dataset changed since the run in '{out}' started (files added, removed "
                          "or modified); start a new run instead")
    return ck


def run(dataset, cfg: RunConfig | None = None, *, out=None, overwrite: bool = False, cache_dir=None,
        val_dataset=None, relabel=None, progress=None, path_column: str | None = None,
        label_column: str | None = None, resume: bool = False) -> RunResult:
    """Train on ``dataset`` (folder or manifest), record signals, and write the report folder.

    ``relabel(table) -> labels`` replaces the labels in memory (eval-noise); the dataset on disk is
    never touched. ``resume=True`` continues the interrupted run in ``out`` from its last epoch
    checkpoint (same report as an uninterrupted run on the CPU). Under torchrun every process calls
    this; rank 0 writes the files. Returns a ``RunResult`` whose ``summary`` is what ``--json`` prints.
    """
    cfg = cfg or RunConfig()
    timings = {}
    t_all = time.perf_counter()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2 ** 32))

    device = resolve_device(cfg.device)
    dist = distributed.setup(device.type)
    device = distributed.device_for(dist, device)
    main = dist.is_main
    emit = (progress or (lambda event, **info: None)) if main else (lambda event, **info: None)

    table = load_index(dataset, path_column=path_column, label_column=label_column)
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out: the folder of the interrupted run")
        out = Path(out)
        ck = _check_resumable(out, cfg, table.fingerprint())
    else:
        out = check_out_dir(Path(out) if out else default_out_dir(table.location), table.root, overwrite=overwrite)
        ck = None
    emit("indexed", n=len(table), classes=table.num_classes, ignored=len(table.ignored))

    dtype = resolve_precision(cfg.precision, device)
    # the model is built before decoding: its preferred input size decides the decode size
    model = create_model(cfg.model, table.num_classes, weights=cfg.weights, pretrained=cfg.pretrained)

    t = time.perf_counter()
    if not main:
        dist.barrier()   # rank 0 decodes and fills the cache; the others then load it
    decoded = load_images(table, image_size=cfg.image_size, strict=cfg.strict, workers=cfg.workers,
                          cache_dir=cache_dir, default_size=_default_size(cfg.model, model),
                          memory_bytes=memory_budget(cfg.cache_memory),
                          progress=lambda d, n: emit("decode", done=d, total=n))
    if main:
        dist.barrier()
    timings["decode_s"] = time.perf_counter() - t
    table = decoded.table
    labels = np.asarray(relabel(table) if relabel else table.labels, dtype=np.int64)
    if len(decoded.images) < 2 or np.bincount(labels, minlength=table.num_classes).max() == len(labels):
        raise ConfigError(f"'{table.location}': fewer than two classes have readable images; memscan needs two")
    mapped = isinstance(decoded.images, np.memmap)
    emit("decoded", n=len(table), size=decoded.images.shape[-1], skipped=len(decoded.skipped),
         from_cache=decoded.from_cache, mapped=mapped)

    pcfg = getattr(model, "pretrained_cfg", None) or {}
    if (cfg.weights or cfg.pretrained) and "mean" in pcfg:
        mean, std = list(pcfg["mean"]), list(pcfg["std"])
    else:
        mean, std = channel_stats(decoded.images)
    channels_last = cfg.channels_last if cfg.channels_last is not None else (
        device.type in ("cpu", "cuda") and is_conv_net(model))
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model = distributed.wrap(torch.compile(model) if cfg.compile else model, dist, device)
    source = InMemorySource(decoded.images, labels, mean=mean, std=std, device=device, channels_last=channels_last)
    val_source = None
    if val_dataset is not None:
        vt = load_index(val_dataset)
        if vt.class_names != table.class_names:
            raise ConfigError(f"validation set '{val_dataset}' has classes {vt.class_names}, the dataset has "
                              f"{table.class_names}; they must match")
        vd = load_images(vt, image_size=decoded.images.shape[-1], strict=cfg.strict, workers=cfg.workers,
                         cache_dir=cache_dir)
        val_source = InMemorySource(vd.images, vd.table.labels, mean=mean, std=std, device=device,
                                    channels_last=channels_last)

    traj_dir = out / "trajectories"
    curves_file = out / "epochs.parquet"
    ck_file = out / CHECKPOINT
    res_curves: list[dict] = []
    if main:
        if ck is None:
            if resume:   # killed before the first checkpoint: start the same run over in place
                shutil.rmtree(traj_dir, ignore_errors=True)
            else:        # only now: a bad model, weights file or dataset leaves no empty run folder behind
                create_out_dir(out)
            (out / RUN_ARGS).write_text(json.dumps({
                "dataset": str(Path(dataset).resolve()), "config": cfg.to_dict(), "path_column": path_column,
                "label_column": label_column, "cache_dir": None if cache_dir is None else str(Path(cache_dir).resolve()),
                "val_dataset": None if val_dataset is None else str(Path(val_dataset).resolve()),
                "relabelled": relabel is not None}, indent=1))
        else:
            res_curves = list(ck["curves"])
            for f in traj_dir.glob("epoch-*.parquet"):   # epochs after the checkpoint are redone
                if int(f.stem.split("-")[1]) > ck["epoch"]:
                    f.unlink()
            write_atomic(pa.Table.from_pylist(res_curves), curves_file) if res_curves else None
    dist.barrier()
    last_ck = {"epoch": None if ck is None else ck["epoch"]}

    def on_epoch(summary):
        if main:
            write_atomic(pa.Table.from_pylist(res_curves + [summary]), curves_file)
        res_curves.append(summary)
        emit("epoch", **summary, max_epochs=cfg.max_epochs)

    def on_checkpoint(state):
        if main:
            save_checkpoint(dict(state, config=cfg.to_dict(), fingerprint=table.fingerprint()), ck_file)
            last_ck["epoch"] = state["epoch"]

    if ck is not None:
        emit("resumed", epoch=ck["epoch"] + 1)
    t = time.perf_counter()
    try:
        result = fit(train_model, source, cfg, recorder=Recorder(len(source), device=device),
                     on_record=(lambda rec: write_epoch(traj_dir, rec)) if main else None, on_epoch=on_epoch,
                     on_step=lambda s, n: emit("step", step=s, steps=n), val_source=val_source,
                     rank=dist.rank, world=dist.world, resume=ck, on_checkpoint=on_checkpoint,
                     stop_decider=dist.decide if dist.active else None)
    except KeyboardInterrupt:
        done = "no epoch finished" if last_ck["epoch"] is None else f"epochs 1-{last_ck['epoch'] + 1} are saved"
        raise Interrupted(f"interrupted; {done} in '{out}': continue with 'memscan resume {out}'") from None
    except RuntimeError as e:
        if not dist.active:
            raise
        # gloo/NCCL report a dead peer as a RuntimeError from whichever collective noticed it
        msg = re.sub(r"^\[[^\]]*\]\s*", "", str(e).splitlines()[0])[:160]
        raise TrainingError(f"rank {dist.rank}: lost contact with the other processes ({msg}); "
                            f"one probably died (see its log); continue with 'memscan resume {out}'") from None
    timings["train_s"] = time.perf_counter() - t
    if result.nan_epoch is not None:
        kept = f"the {len(res_curves)} finished epochs are kept in '{traj_dir}'" if res_curves else "nothing was kept"
        raise TrainingError(f"loss became NaN/inf in epoch {result.nan_epoch + 1}; {kept}; lower --lr (now {cfg.lr}) "
                            "or check the images")
    if not main:   # rank 0 scores and writes the report; the others are done
        dist.barrier()
        dist.teardown()
        return RunResult(out, out / "report.parquet", {"rank": dist.rank, "epochs_trained": len(res_curves)})

    t = time.perf_counter()
    with probability_buffer(out, len(source), table.num_classes, memory_budget(cfg.cache_memory)) as buf:
        # the training batch size where it is not tiny: the same shapes reuse the conv primitives oneDNN
        # built for training (0.63 -> 0.47 s for 5,000 images at batch 64 against 256, in a run)
        probs = predict_probs(model, source, batch_size=cfg.batch_size if cfg.batch_size >= 64 else 256,
                              dtype=dtype, out=buf)
        done_epochs = len(res_curves)
        peak = result.peak_epoch
        sig = accumulate(read_epochs(traj_dir), len(source), peak_epoch=peak, window_start=done_epochs // 2)
        scores = compute_scores(sig, probs, labels)
        del probs, buf
    timings["score_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all

    counts = {c: int((scores["category"] == c).sum()) for c in CATEGORIES}
    meta = {
        "memscan_version": __version__,
        "config": cfg.to_dict(),
        "dataset": {"location": str(table.location), "source": table.source, "n": len(table),
                    "classes": table.class_names, "fingerprint": table.fingerprint(),
                    "image_size": int(decoded.images.shape[-1]), "skipped": decoded.skipped,
                    "memory_mapped": mapped,
                    "ignored_files": len(table.ignored)},
        "stop": {"reason": result.stop_reason, "epochs_trained": done_epochs,
                 "peak_epoch": None if peak is None else peak + 1,
                 "csg_epochs": sig.peak_epochs, "mislabel_window": [done_epochs // 2 + 1, done_epochs],
                 "nan": result.nan_epoch is not None},
        "curves": {k: [c.get(k) for c in res_curves] for k in
                   ("weight_norm", "total_norm", "norm_layer_norm", "grad_mean", "loss_mean", "train_acc",
                    "val_loss", "val_acc", "lr")},
        "device": str(device), "processes": dist.world, "precision": str(dtype).removeprefix("torch."), "channels_last": channels_last,
        "timings": timings, "categories": counts,
    }
    report = build_table(table, labels, sig, scores, meta)
    report_path = out / "report.parquet"
    try:
        write_atomic(report, report_path)
    except OSError as e:
        raise OutputError(f"cannot write '{report_path}' ({e.strerror or e}); no partial report was left and the "
                          f"training checkpoint is kept: free disk space, then 'memscan resume {out}'") from None
    torch.save({"model": cfg.model, "num_classes": table.num_classes, "class_names": table.class_names,
                "state_dict": model.state_dict(), "mean": mean, "std": std,
                "image_size": int(decoded.images.shape[-1]), "epoch": done_epochs}, out / "model.pt")
    (out / "run.json").write_text(json.dumps({
        **meta, "versions": {"memscan": __version__, "torch": torch.__version__, "python": sys.version.split()[0],
                             "platform": platform.platform()},
        "command": sys.argv, "created": datetime.now().isoformat(timespec="seconds")}, indent=1, default=str))
    ck_file.unlink(missing_ok=True)   # the run is complete: model.pt holds the final weights
    dist.barrier()
    dist.teardown()

    top = np.argsort(scores["mislabel_rank"])[:10]
    summary = {
        "out_dir": str(out), "report": str(report_path), "n": len(table), "classes": table.num_classes,
        "epochs_trained": done_epochs, "peak_epoch": meta["stop"]["peak_epoch"], "stop_reason": result.stop_reason,
        "train_acc": res_curves[-1]["train_acc"] if res_curves else None,
        "stop_acc": float((scores["pred"] == labels).mean()),
        "categories": counts, "skipped": decoded.skipped,
        "top": [{"rank": int(scores["mislabel_rank"][i]), "path": table.paths[i],
                 "label": table.class_names[labels[i]], "pred": table.class_names[scores["pred"][i]],
                 "p_pred": float(scores["p_pred"][i]), "mislabel_score": float(scores["mislabel_score"][i]),
                 "category": str(scores["category"][i])} for i in top],
        "timings": timings, "nan": result.nan_epoch is not None,
    }
    return RunResult(out, report_path, summary, scores)
