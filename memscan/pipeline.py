"""``run()``: dataset -> run folder -> prepared data and model -> training with recording -> scores
-> report. The one function behind ``memscan run`` (and ``eval-noise``); it reads top to bottom.

Progress reaches the caller through ``progress(event, **info)``; nothing here prints. Under
torchrun every process calls ``run``; rank 0 owns the run folder and writes every file.
"""
from __future__ import annotations

import os
import platform
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from . import __version__, distributed
from .config import RunConfig, saved_config
from .data import load_index
from .data.cache import default_cache_dir, load_images, memory_budget
from .data_audit import audit_images, audit_leaks
from .dataset_guard import DatasetGuard
from .errors import ConfigError, Interrupted, OutputError, RunFolderError, TrainingError
from .explain import before_learned, prediction_agreement, reasons, suggestion
from .prepare import Prepared, prepare
from .report import DatasetInfo, ReportMeta, StopInfo, build_table
from .run_folder import RunFolder, default_run_path
from .scores import CATEGORIES, accumulate, compute_scores, trust_warnings
from .signals import Recorder
from .train import fit, predict_probs, resolve_device
from .trajectories import check_epoch_files, read_epochs, read_predictions, write_epoch


@dataclass
class RunResult:
    out_dir: Path
    report_path: Path
    summary: dict
    scores: dict = field(repr=False, default_factory=dict)


def run(dataset, cfg: RunConfig | None = None, *, out=None, overwrite: bool = False, cache_dir=None,
        val_dataset=None, relabel=None, progress=None, path_column: str | None = None,
        label_column: str | None = None, encoding: str | None = None, resume: bool = False,
        test_dataset=None) -> RunResult:
    """Train on ``dataset`` (folder or manifest), record signals, and write the run folder ``out``.

    ``relabel(table) -> labels`` replaces the labels in memory (eval-noise); the dataset on disk is
    never touched. ``resume=True`` continues the interrupted run in ``out`` from its last epoch
    checkpoint (same report as an uninterrupted run on the CPU). ``test_dataset``: a test split whose
    duplicates of training images are written as ``leaks.parquet``. Returns a ``RunResult`` whose
    ``summary`` is what ``--json`` prints.
    """
    cfg = (cfg or RunConfig()).resolved()   # run.json and the report record the stem and threshold used
    t_all, timings = time.perf_counter(), {}
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2 ** 32))
    dist = distributed.setup(resolve_device(cfg.device).type)
    emit = (progress or (lambda event, **info: None)) if dist.is_main else (lambda event, **info: None)

    table = load_index(dataset, path_column=path_column, label_column=label_column, encoding=encoding)
    test_table = load_test_index(test_dataset, path_column=path_column, label_column=label_column, encoding=encoding)
    val_table = None
    if val_dataset is not None:   # indexed first to keep outputs out of it; prepare() decodes this index
        from .errors import MemscanError
        try:
            val_table = load_index(val_dataset)
        except MemscanError as e:
            raise type(e)(f"--val: {e}") from None
    guard = guard_outputs(table, out, cache_dir, test=test_table, val=val_table)
    folder, ck = open_run_folder(out, table, guard, cfg, resume=resume, overwrite=overwrite, main=dist.is_main)
    emit("indexed", n=len(table), classes=table.num_classes, ignored=len(table.ignored))
    with folder:   # unlocked at the end; a failure before ``begin_run`` leaves the folder as it was found
        with _interrupt_message(folder, "decoding"):
            t = time.perf_counter()
            prep = prepare(table, cfg, dist=dist, cache_dir=cache_dir, relabel=relabel, val_dataset=val_table,
                           progress=emit)
            timings["decode_s"] = time.perf_counter() - t
        emit("decoded", n=len(prep.table), size=prep.image_size, skipped=len(prep.skipped),
             from_cache=prep.from_cache, mapped=prep.mapped, notes=prep.notes)
        if dist.is_main:
            begin_run(folder, ck, cfg, resume=resume, dataset=dataset, cache_dir=cache_dir, val_dataset=val_dataset,
                      path_column=path_column, label_column=label_column, encoding=encoding, relabel=relabel,
                      test_dataset=test_dataset, samples=(len(prep.table), prep.table.num_classes))
        dist.barrier()

        t = time.perf_counter()
        result, curves = train(prep, cfg, folder, ck, emit, fingerprint=table.fingerprint())
        timings["train_s"] = time.perf_counter() - t
        if not dist.is_main:   # rank 0 scores and writes the report; the others are done
            dist.barrier()
            dist.teardown()
            return RunResult(folder.path, folder.report, {"rank": dist.rank, "epochs_trained": len(curves)})

        t = time.perf_counter()
        with _interrupt_message(folder, "scoring"):
            sig, scores = score(prep, folder, cfg, result, len(curves))
        timings["score_s"] = time.perf_counter() - t
        t = time.perf_counter()
        with _interrupt_message(folder, "auditing the images"):
            audit, leaks = audit_data(prep, scores, test_table, cfg, cache_dir)
        timings["audit_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_all
        meta = report_metadata(prep, cfg, result, sig, scores, curves, timings)
        meta.audit = audit
        write_results(folder, prep, cfg, meta, sig, scores, epochs=len(curves), leaks=leaks)
    dist.barrier()
    dist.teardown()
    return RunResult(folder.path, folder.report, run_summary(folder, prep, result, scores, meta, curves), scores)


# ---------------------------------------------------------------- the steps, in order

def guard_outputs(table, out, cache_dir, *, test=None, val=None) -> DatasetGuard:
    """Refuse a run folder or decode cache inside the dataset, or inside the --test or --val set (datasets too),
    before anything is written; returns the dataset's guard, which later checks every output file."""
    for other, option in ((test, "--test"), (val, "--val")):
        if other is not None:
            g = DatasetGuard.for_table(other)
            g.check_folder(out if out is not None else default_run_path(table.location), what=f"--out ({option} set)")
            g.check_folder(cache_dir if cache_dir is not None else default_cache_dir(),
                           what=f"the decode cache ({option} set)", may_hold=True)
    guard = DatasetGuard.for_table(table)
    guard.check_folder(cache_dir if cache_dir is not None else default_cache_dir(), what="the decode cache",
                      may_hold=True)
    return guard


def load_test_index(test_dataset, **manifest_options):
    """The ``--test`` set's index (read with the training manifest's column options), or None; its errors
    say that they are about ``--test``."""
    if test_dataset is None:
        return None
    from .errors import MemscanError
    try:
        return load_index(test_dataset, **manifest_options)
    except MemscanError as e:
        raise type(e)(f"--test: {e}") from None


def open_run_folder(out, table, guard: DatasetGuard, cfg: RunConfig, *, resume: bool, overwrite: bool,
                    main: bool):
    """(folder, checkpoint or None). Rank 0 validates and locks the folder; the others only name it."""
    if resume and out is None:
        raise ConfigError("--resume needs --out: the folder of the interrupted run")
    path = Path(out) if out is not None else default_run_path(table.location)
    if not main:
        folder = RunFolder(path)
        return folder, (folder.load_checkpoint() if resume else None)
    if not resume:
        return RunFolder.start(path, guard=guard, overwrite=overwrite), None
    guard.check_folder(path)
    folder = RunFolder.resume(path)
    try:
        return folder, checked_checkpoint(folder, cfg, table.fingerprint())
    except BaseException:
        folder.release()
        raise


def checked_checkpoint(folder: RunFolder, cfg: RunConfig, fingerprint: str) -> dict | None:
    """The folder's checkpoint, or None to start over; refuses one of another config or dataset."""
    ck = folder.load_checkpoint()
    if ck is None:
        return None
    # an option the saved config lacks did not exist when the run started: what it did then applies
    saved = saved_config(ck["config"])
    diff = sorted(k for k, v in cfg.to_dict().items() if k in saved and saved[k] != v)
    if diff:
        raise ConfigError(f"--resume: options differ from the interrupted run in {', '.join(diff)} (was: "
                          + ", ".join(f"{k}={saved.get(k)!r}" for k in diff)
                          + "); drop them, or use 'memscan resume RUN' which reuses the saved options")
    if ck["epoch"] >= cfg.max_epochs:
        raise RunFolderError(f"checkpoint '{folder.checkpoint}' says epoch {ck['epoch'] + 1} of a run of at most "
                             f"{cfg.max_epochs}: it is not this run's; start a new run with --overwrite")
    if ck.get("fingerprint") != fingerprint:
        raise ConfigError(f"--resume: the dataset changed since the run in '{folder.path}' started (files added, "
                          "removed or modified); start a new run instead")
    return ck


def begin_run(folder: RunFolder, ck, cfg: RunConfig, *, resume: bool, dataset, cache_dir, val_dataset, path_column,
              label_column, encoding, relabel, test_dataset=None, samples=None) -> None:
    """Only now, with data and model proven good, replace an earlier run's files (``--overwrite``),
    or drop the epochs after the checkpoint and check the ones it builds on (``--resume``; ``samples``:
    (samples, classes) of the data, which each kept epoch file must match)."""
    folder.begun = True
    if ck is not None:
        folder.drop_epochs_after(ck["epoch"])
        if samples is not None:
            check_epoch_files(folder.trajectories, *samples, last_epoch=ck["epoch"])
        if ck["curves"]:
            folder.write_table(pa.Table.from_pylist(ck["curves"]), folder.curves)
        return
    if resume:
        folder.restart_in_place()   # killed before its first checkpoint: the same run starts over
    else:
        folder.reset()
    absolute = lambda p: None if p is None else str(Path(p).resolve())
    folder.save_args({"dataset": absolute(dataset), "config": cfg.to_dict(), "path_column": path_column,
                      "label_column": label_column, "encoding": encoding, "cache_dir": absolute(cache_dir),
                      "val_dataset": absolute(val_dataset), "relabelled": relabel is not None,
                      "test_dataset": absolute(test_dataset)})


def train(prep: Prepared, cfg: RunConfig, folder: RunFolder, ck, emit, *, fingerprint: str):
    """``train.fit`` with the run folder's trajectory, curve and checkpoint writers (rank 0). ``fingerprint``:
    the indexed dataset's, which ``checked_checkpoint`` compares on resume (the decoded table's leaves out
    unreadable images, so a dataset holding one could never be resumed)."""
    main, dist = prep.dist.is_main, prep.dist
    curves: list[dict] = [] if ck is None else [dict(c) for c in ck["curves"]]
    last = {"epoch": None if ck is None else ck["epoch"]}

    def on_epoch(summary):
        if main:
            folder.write_table(pa.Table.from_pylist(curves + [summary]), folder.curves)
        curves.append(summary)
        emit("epoch", **summary, max_epochs=cfg.max_epochs)

    def on_checkpoint(state):
        if main:
            folder.save_checkpoint(dict(state, config=cfg.to_dict(), fingerprint=fingerprint))
            last["epoch"] = state["epoch"]

    if ck is not None:
        emit("resumed", epoch=ck["epoch"] + 1)
    try:
        result = fit(prep.train_model, prep.source, cfg, recorder=Recorder(len(prep.source), device=prep.device),
                     on_record=(lambda rec: write_epoch(folder.trajectories, rec)) if main else None,
                     on_epoch=on_epoch, on_step=lambda s, n: emit("step", step=s, steps=n),
                     val_source=prep.val_source, rank=dist.rank, world=dist.world, resume=ck,
                     on_checkpoint=on_checkpoint, stop_decider=dist.decide if dist.active else None,
                     on_anneal=lambda info: emit("anneal", **info))
    except KeyboardInterrupt:
        done = "no epoch finished" if last["epoch"] is None else f"epochs 1-{last['epoch'] + 1} are saved"
        raise Interrupted(f"interrupted; {done} in '{folder.path}': continue with "
                          f"'memscan resume {folder.path}'") from None
    except RuntimeError as e:
        if not dist.active:
            raise
        # gloo/NCCL report a dead peer as a RuntimeError from whichever collective noticed it
        msg = re.sub(r"^\[[^\]]*\]\s*", "", str(e).splitlines()[0])[:160]
        raise TrainingError(f"rank {dist.rank}: lost contact with the other processes ({msg}); one probably "
                            f"died (see its log); continue with 'memscan resume {folder.path}'") from None
    if result.nan_epoch is not None and result.anneal is not None:
        raise TrainingError(f"{result.stop_reason}; the {len(curves)} trained epochs are kept in "
                            f"'{folder.trajectories}': start a new run with --anneal-epochs 0 or a lower --anneal-lr "
                            f"(now {cfg.anneal_lr})")
    if result.nan_epoch is not None:
        kept = (f"the {len(curves)} finished epochs are kept in '{folder.trajectories}'" if curves
                else "nothing was kept")
        raise TrainingError(f"loss became NaN/inf in epoch {result.nan_epoch + 1}; {kept}; lower --lr (now "
                            f"{cfg.lr}) or check the images")
    return result, curves


CURVE_KEYS = ("weight_norm", "total_norm", "norm_layer_norm", "grad_mean", "loss_mean", "train_acc", "val_loss",
              "val_acc", "lr")
PROBS_IN_RAM = 2 ** 30   # bytes of class probabilities kept in RAM; above: a temporary file, memory-mapped


@contextmanager
def probability_buffer(folder: RunFolder, n: int, k: int, memory_bytes: int):
    """Where the prediction pass writes the [N, K] fp32 probabilities: RAM when they are small, else a
    memory-mapped temporary file in the run folder (1.28 M x 1000 classes = 5 GB), so that memscan's
    RAM stays O(N). The file is allocated up front (a full disk fails here, not with SIGBUS mid-pass)
    and removed afterwards, or by ``resume``/``--overwrite`` after a crash."""
    size = n * k * 4
    if size <= min(PROBS_IN_RAM, memory_bytes):
        yield np.empty((n, k), dtype=np.float32)
        return
    path = folder.probabilities_file()
    try:
        with open(path, "wb") as f:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(f.fileno(), 0, size)
            else:  # pragma: no cover - macOS/Windows
                f.truncate(size)
        buf = np.memmap(path, dtype=np.float32, mode="r+", shape=(n, k))
    except OSError as e:
        path.unlink(missing_ok=True)
        raise OutputError(f"cannot allocate {size / 2**30:.1f} GiB for the class probabilities in '{folder.path}' "
                          f"({e.strerror or e}): free disk space, then 'memscan resume {folder.path}'") from None
    try:
        yield buf
    finally:
        del buf
        path.unlink(missing_ok=True)


def score(prep: Prepared, folder: RunFolder, cfg: RunConfig, result, epochs: int):
    """The stop point's class probabilities, the trajectories summed, and every score. Non-finite
    values are an error: a report (and a gate) on garbage would look like a clean dataset."""
    with probability_buffer(folder, len(prep.source), prep.table.num_classes, memory_budget(cfg.cache_memory)) as buf:
        # the training batch size where it is not tiny: the same shapes reuse the conv primitives oneDNN
        # built for training (0.63 -> 0.47 s for 5,000 images at batch 64 against 256, in a run)
        probs = predict_probs(prep.model, prep.source, batch_size=cfg.batch_size if cfg.batch_size >= 64 else 256,
                              dtype=prep.dtype, out=buf, flip=cfg.flips)
        if not _all_finite(probs):
            raise TrainingError(f"the model's predictions are NaN/inf after {epochs} epochs; no report was written "
                                f"(the trajectories are kept in '{folder.trajectories}'): lower --lr (now {cfg.lr}) "
                                "or check the images")
        sig = accumulate(read_epochs(folder.trajectories), len(prep.source), peak_epoch=result.peak_epoch,
                         window_start=epochs // 2)
        scores = compute_scores(sig, probs, prep.labels, annealed=result.anneal is not None)
        del probs, buf
    scores.update(explain(sig, scores, prep, folder, window_start=epochs // 2, late_epochs=epochs - epochs // 2))
    bad = [k for k in ("mislabel_score", "memorization_score", "atypicality_score") if not _all_finite(scores[k])]
    if bad:
        raise TrainingError(f"scores {', '.join(bad)} are not finite after {epochs} epochs; no report was written: "
                            f"lower --lr (now {cfg.lr}) or check the images")
    return sig, scores


def explain(sig, scores: dict, prep: Prepared, folder: RunFolder, *, window_start: int, late_epochs: int) -> dict:
    """The suggested label, the late window's agreement with it, and a reason for every flagged sample."""
    sugg, p_sugg = suggestion(scores)
    agree = prediction_agreement(read_predictions(folder.trajectories), sugg, window_start=window_start)
    earlier = before_learned(read_predictions(folder.trajectories), prep.labels, sig.learning_time,
                             prep.table.num_classes)
    why = reasons(sig, scores, prep.labels, prep.table.class_names, agreement=agree, late_epochs=late_epochs,
                  earlier=earlier)
    return {"suggested_label": sugg, "p_suggested": p_sugg, "suggestion_agreement": agree, "reason": why}


def audit_data(prep: Prepared, scores: dict, test_table, cfg: RunConfig, cache_dir):
    """Image issues and duplicates into ``scores`` (report columns); (summary, leak pairs or None)."""
    cols, summary, index = audit_images(prep.images, prep.sizes, prep.labels, prep.table.paths,
                                        scores["mislabel_score"])
    leaks = None
    if test_table is not None:
        decoded = load_images(test_table, image_size=prep.image_size, strict=cfg.strict, workers=cfg.workers,
                              cache_dir=cache_dir, max_pixels=cfg.max_image_pixels,
                              memory_bytes=memory_budget(cfg.cache_memory))
        leaks, cols["test_duplicates"] = audit_leaks(decoded.table, decoded.images, prep.table.paths,
                                                     prep.table.class_names, prep.labels, prep.images, index)
        summary["test"] = {"location": str(Path(test_table.location).resolve()), "n": len(decoded.table),
                           "skipped": len(test_table.unreadable) + len(decoded.skipped),
                           "leaked": leaks.num_rows, "exact": int(sum(k == "exact" for k in leaks["kind"].to_pylist())),
                           "label_differs": int(leaks.num_rows - sum(leaks["same_label"].to_pylist())),
                           "training_images_leaked": int((cols["test_duplicates"] > 0).sum())}
    scores.update(cols)
    return summary, leaks


def _all_finite(a, rows: int = 1 << 16) -> bool:
    return all(np.isfinite(a[s:s + rows]).all() for s in range(0, len(a), rows))


def report_metadata(prep: Prepared, cfg: RunConfig, result, sig, scores, curves, timings) -> ReportMeta:
    done, peak, t = len(curves), result.peak_epoch, prep.table
    return ReportMeta(
        memscan_version=__version__, config=cfg.to_dict(),
        dataset=DatasetInfo(location=str(Path(t.location).resolve()), source=t.source, n=len(t),
                            classes=t.class_names, fingerprint=t.fingerprint(), image_size=prep.image_size,
                            skipped=prep.skipped, memory_mapped=prep.mapped, ignored_files=len(t.ignored)),
        stop=StopInfo(reason=result.stop_reason, epochs_trained=done, peak_epoch=None if peak is None else peak + 1,
                      csg_epochs=sig.peak_epochs, mislabel_window=[done // 2 + 1, done],
                      nan=result.nan_epoch is not None,
                      anneal_epochs=(result.anneal or {}).get("epochs", 0),
                      anneal_lr=(result.anneal or {}).get("lr")),
        curves={k: [c.get(k) for c in curves] for k in CURVE_KEYS},
        device=str(prep.device), processes=prep.dist.world, precision=str(prep.dtype).removeprefix("torch."),
        channels_last=prep.channels_last, timings=timings,
        categories={c: int((scores["category"] == c).sum()) for c in CATEGORIES},
        stop_accuracy=float((scores["pred"] == prep.labels).mean()),
        warnings=trust_warnings(prep.labels, scores["pred"], augmented=cfg.augment != "none"))


def write_results(folder: RunFolder, prep: Prepared, cfg: RunConfig, meta: ReportMeta, sig, scores, *,
                  epochs: int, leaks: pa.Table | None = None):
    """Report, leak pairs, model weights and run.json, each atomically; then the checkpoint goes."""
    try:
        folder.write_table(build_table(prep.table, prep.labels, sig, scores, meta), folder.report)
    except (OSError, OutputError) as e:
        why = getattr(e, "strerror", None) or e
        raise OutputError(f"cannot write '{folder.report}' ({why}); no partial report was left and the training "
                          f"checkpoint is kept: free disk space, then 'memscan resume {folder.path}'") from None
    if leaks is not None:
        folder.write_table(leaks, folder.leaks)
    folder.write_model({"model": cfg.model, "num_classes": prep.table.num_classes,
                        "class_names": prep.table.class_names, "state_dict": prep.model.state_dict(),
                        "mean": [float(v) for v in prep.mean], "std": [float(v) for v in prep.std],
                        "image_size": prep.image_size, "epoch": epochs, "anneal_epochs": meta.stop.anneal_epochs})
    folder.write_run_info({**meta.to_dict(), "versions": {"memscan": __version__, "torch": torch.__version__,
                                                "python": sys.version.split()[0], "platform": platform.platform()},
                           "command": sys.argv, "created": datetime.now().isoformat(timespec="seconds")})
    folder.finish()


def run_summary(folder: RunFolder, prep: Prepared, result, scores, meta: ReportMeta, curves) -> dict:
    """What ``memscan run --json`` prints: the outcome and the ten most likely mislabeled samples."""
    names, labels, t = prep.table.class_names, prep.labels, prep.table
    top = np.argsort(scores["mislabel_rank"])[:10]
    return {
        "out_dir": str(folder.path), "report": str(folder.report), "n": len(t), "classes": t.num_classes,
        "epochs_trained": len(curves), "peak_epoch": meta.stop.peak_epoch, "stop_reason": result.stop_reason,
        "train_acc": curves[-1]["train_acc"] if curves else None,
        "stop_acc": meta.stop_accuracy, "warnings": meta.warnings,
        "categories": meta.categories, "skipped": prep.skipped, "notes": prep.notes,
        "top": [{"rank": int(scores["mislabel_rank"][i]), "path": t.paths[i], "label": names[labels[i]],
                 "pred": names[scores["pred"][i]], "p_pred": float(scores["p_pred"][i]),
                 "mislabel_score": float(scores["mislabel_score"][i]), "category": str(scores["category"][i])}
                for i in top],
        "timings": meta.timings, "nan": result.nan_epoch is not None, "audit": meta.audit,
    }


# ---------------------------------------------------------------- failure handling

@contextmanager
def _interrupt_message(folder: RunFolder, phase: str):
    """Ctrl-C (or SIGTERM) outside training: say what was kept and what to do next."""
    try:
        yield
    except KeyboardInterrupt:
        if phase == "decoding":
            raise Interrupted("interrupted while decoding; nothing was trained (images decoded so far are not "
                              "kept): run the same command again") from None
        raise Interrupted(f"interrupted while {phase}; training is complete and checkpointed in '{folder.path}': "
                          f"'memscan resume {folder.path}' writes the report") from None
