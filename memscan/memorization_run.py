"""``memscan memorization``: train the K subset models of the reference estimator and write the estimate.

One folder (a ``RunFolder`` of kind "memorization") holds ``run-args.json``, one
``models/model-NNNN.parquet`` per trained model (which samples it trained on, and its probability of
every sample's given label) and, at the end, ``memorization.parquet``. A killed run resumes at model
granularity: finished model files are checked against the plan and kept. Under torchrun each process
trains its own share of the models (model k on rank k mod world); rank 0 writes the estimate.
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import __version__, distributed
from .config import RunConfig, saved_config
from .data import load_index
from .dataset_guard import DatasetGuard
from .data.cache import default_cache_dir
from .errors import ConfigError, Interrupted, OutputExistsError, ReportError, RunFolderError
from .files import is_regular_file
from .memorization import estimate, split_half, subset_masks, subset_size
from .prepare import prepare
from .run_folder import MEMORIZATION, RunFolder, default_run_path
from .signals import Recorder
from .train import fit, resolve_device

# Each model trains this long by default, with a cosine schedule to zero: memorization is a property of a
# model that fits its training set, and a short constant-rate run does not (memscan's own default stops at
# ~70% on CIFAR-10). BENCHMARKS.md §12 measures what the estimate's reliability gains from more epochs.
DEFAULT_EPOCHS = 30
DEFAULT_MODELS = 32
DEFAULT_SUBSET = 0.7
#: the stop rule's options: every model trains a fixed number of epochs (stop "none"), so a folder or model file
#: matches the plan whatever they were
STOP_RULE_OPTIONS = frozenset({"stop_signal", "rank_threshold", "smoothing", "patience", "min_epochs"})


@dataclass(frozen=True)
class Plan:
    models: int = DEFAULT_MODELS
    subset: float = DEFAULT_SUBSET

    def __post_init__(self):
        if isinstance(self.models, bool) or not isinstance(self.models, int) or not 4 <= self.models <= 10_000:
            raise ConfigError(f"--models {self.models} must be a whole number from 4 to 10000 (32-64 is typical: "
                              "every sample needs several models on each side)")
        if not 0.05 <= self.subset <= 0.95:
            raise ConfigError(f"--subset {self.subset} must be between 0.05 and 0.95 (Feldman & Zhang use 0.7)")


def model_config(cfg: RunConfig, k: int) -> RunConfig:
    """Model k's recipe: the user's, trained to ``max_epochs`` with no early stop and no annealing."""
    return cfg.replace(stop="none", anneal_epochs=0, seed=cfg.seed + k)


def memorization(dataset, cfg: RunConfig, plan: Plan, *, out=None, overwrite: bool = False, resume: bool = False,
                 cache_dir=None, progress=None, path_column=None, label_column=None, encoding=None) -> dict:
    """Train the plan's models on ``dataset`` and write the estimate in ``out``; returns the summary
    that ``--json`` prints."""
    emit = progress or (lambda event, **info: None)
    t0 = time.perf_counter()
    cfg = cfg.replace(stem=cfg.resolved().stem)   # the folder records whether its models are whitened
    dist = distributed.setup(resolve_device(cfg.device).type)
    table = load_index(dataset, path_column=path_column, label_column=label_column, encoding=encoding)
    guard = DatasetGuard.for_table(table)
    guard.check_folder(cache_dir if cache_dir is not None else default_cache_dir(), what="the decode cache",
                       may_hold=True)
    if out is None and dist.world > 1:   # each process would name its own folder from its own clock
        raise ConfigError("under torchrun, 'memscan memorization' needs --out (one folder every process writes to, "
                          "on a filesystem they share)")
    try:
        subset_size(len(table), plan.subset)
    except ValueError as e:
        raise ConfigError(f"--subset {plan.subset}: {e}; use more samples or a subset nearer 0.5") from None
    path = Path(out) if out is not None else default_run_path(table.location, suffix="-memorization")
    folder = _open(path, guard, resume=resume, overwrite=overwrite, main=dist.is_main)
    with folder:
        if resume:
            _check_resumable(folder, cfg, plan, table)
        try:
            summary = _train_and_estimate(folder, table, cfg, plan, dist, resume=resume, cache_dir=cache_dir,
                                          emit=emit, args={"dataset": str(Path(dataset).resolve()),
                                                           "path_column": path_column, "label_column": label_column,
                                                           "encoding": encoding}, t0=t0)
        except KeyboardInterrupt:
            raise Interrupted(_interrupted(folder, dataset, plan)) from None
    dist.teardown()
    return summary


def _interrupted(folder: RunFolder, dataset, plan: Plan) -> str:
    saved = sum(folder.model_file(k).is_file() for k in range(plan.models))
    had = _estimate_models(folder)
    kept = "" if had is None else f"; its estimate over {had} models is intact"
    return (f"interrupted; {saved} of {plan.models} models are saved in '{folder.path}'{kept}: continue with "
            f"'memscan memorization {shlex.quote(str(dataset))} --out {shlex.quote(str(folder.path))} --resume --models "
            f"{plan.models}' and the same options")


def _train_and_estimate(folder: RunFolder, table, cfg: RunConfig, plan: Plan, dist, *, resume: bool, cache_dir, emit,
                        args: dict, t0: float) -> dict | None:
    """Decode, train (or keep) this process's models, and on rank 0 write the estimate once all are saved."""
    prep = prepare(table, cfg, dist=dist, cache_dir=cache_dir, progress=emit)
    if dist.is_main and not resume:
        folder.reset(kind="memorization")
        folder.save_args({**args, "config": cfg.to_dict(),
                          "cache_dir": None if cache_dir is None else str(Path(cache_dir).resolve()),
                          "val_dataset": None, "relabelled": False,
                          "memorization": {"models": plan.models, "subset": plan.subset,
                                           "fingerprint": table.fingerprint()}})
    folder.begun = True
    dist.barrier()   # every process has checked the saved plan before rank 0 records a larger one
    if dist.is_main and resume:
        _record_models(folder, plan.models)
    n = len(prep.labels)
    masks = subset_masks(n, plan.models, plan.subset, cfg.seed)
    for k in range(dist.rank, plan.models, dist.world):
        info = _load_model_file(folder, k, masks[k], prep.table.paths, model_config(cfg, k))
        kept = info is not None
        if not kept:
            info = _train_one(prep, cfg, k, masks[k], folder, on_step=lambda s, n: emit("step", step=s, steps=n))
        emit("model", done=k + 1, total=plan.models, kept=kept, **info)
    summary = None
    if dist.is_main:
        # no collective here: processes finish their shares at different times (a resumed share may be all
        # kept), far apart for a collective's timeout. torchrun stops every process when one fails.
        _wait_for_models(folder, plan.models)
        summary = _write_estimate(folder, prep, cfg, plan, masks, time.perf_counter() - t0)
    return summary


def _wait_for_models(folder: RunFolder, models: int, poll_s: float = 2.0) -> None:
    while not all(folder.model_file(k).is_file() for k in range(models)):
        time.sleep(poll_s)


def _open(path: Path, guard, *, resume: bool, overwrite: bool, main: bool) -> RunFolder:
    if not main:
        return RunFolder(path)
    if resume:
        guard.check_folder(path)
        return RunFolder.resume(path, result=MEMORIZATION, kind="memorization", finished_ok=True)
    return RunFolder.start(path, guard=guard, overwrite=overwrite, kind="memorization")


def _check_resumable(folder: RunFolder, cfg: RunConfig, plan: Plan, table) -> None:
    args = folder.load_args()
    saved = args.get("memorization")
    if not isinstance(saved, dict):
        raise ConfigError(f"'{folder.path}' is not a 'memscan memorization' folder; pass the --out of one")
    had = saved.get("models")
    was = {"subset": saved.get("subset"), **{k: v for k, v in args["config"].items()}}
    now = {"subset": plan.subset, **cfg.to_dict()}
    diff = sorted(k for k in now if k in was and was[k] != now[k] and k not in STOP_RULE_OPTIONS)
    if isinstance(had, int) and plan.models < had:
        diff.insert(0, "models")
        was["models"], now["models"] = had, plan.models
    if diff:
        raise ConfigError("--resume: options differ from the interrupted run in " + ", ".join(
            f"{k} (was {was[k]!r}, now {now[k]!r})" for k in diff) + "; pass the same options as that run (a "
            "larger --models adds models)")
    if saved.get("fingerprint") != table.fingerprint():
        raise ConfigError(f"--resume: the dataset changed since '{folder.path}' started; start a new one")
    # model k's subset does not depend on how many models there are, so a finished estimate takes more models: the
    # ones it has are kept and the estimate is rewritten over all of them (the old file stays until then, so an
    # interrupted extension finds an estimate of fewer models than it asks for, and goes on)
    f = folder.memorization   # refused now, not after hours of training (a pipe there would block the read)
    if f.exists() and not f.is_symlink() and not is_regular_file(f):
        raise RunFolderError(f"'{f}' is not a file (a folder or a pipe where memscan writes its estimate); remove it "
                             "and resume")
    done = _estimate_models(folder)
    if done is not None and isinstance(had, int) and done > had:   # an extension records its count before training
        raise RunFolderError(f"'{folder.memorization}' says it averages {done} models but '{folder.run_args}' planned "
                             f"{had}: the folder was edited; start a new one")
    if done is not None and plan.models <= done:
        raise OutputExistsError(f"'{folder.path}' already finished its {done} models; nothing to resume (pass a larger "
                                "--models with --resume to add models and raise the estimate's reliability)")


def _estimate_models(folder: RunFolder) -> int | None:
    """How many models the folder's written estimate averages (from its metadata alone), or None when there is
    none or it is unreadable."""
    if not is_regular_file(folder.memorization):   # a FIFO planted there would block the read forever
        return None
    try:
        models = json.loads(pq.read_schema(folder.memorization).metadata[b"memscan"]).get("models")
    except Exception:   # missing, damaged or foreign: there is no finished estimate to protect
        return None
    return models if isinstance(models, int) else None


def _record_models(folder: RunFolder, models: int) -> None:
    args = folder.load_args()
    if args["memorization"].get("models") != models:
        args["memorization"]["models"] = models
        folder.save_args(args)


def _train_one(prep, cfg: RunConfig, k: int, mask: np.ndarray, folder: RunFolder, on_step=None) -> dict:
    kcfg = model_config(cfg, k)
    torch.manual_seed(kcfg.seed)
    model = prep.fresh_model(kcfg)
    idx = np.flatnonzero(mask)
    src = prep.subset(idx)
    t = time.perf_counter()
    res = fit(model, src, kcfg, recorder=Recorder(len(src), device=prep.device), on_step=on_step)
    if res.nan_epoch is not None:
        from .errors import TrainingError
        raise TrainingError(f"model {k + 1}: loss became NaN/inf in epoch {res.nan_epoch + 1}; lower --lr "
                            f"(now {cfg.lr})")
    p_given, correct = _predict_given(model, prep.source, batch_size=max(cfg.batch_size, 256), dtype=prep.dtype)
    if not np.isfinite(p_given).all():
        from .errors import TrainingError
        raise TrainingError(f"model {k + 1}: predictions are NaN/inf; lower --lr (now {cfg.lr})")
    info = {"train_acc": float(correct[mask].mean()), "held_out_acc": float(correct[~mask].mean()),
            "seconds": time.perf_counter() - t}
    meta = {"model": k, "config": kcfg.to_dict(), **info}
    t_ = pa.table({"path": prep.table.paths, "in_subset": mask, "p_given": p_given.astype(np.float32)})
    t_ = t_.replace_schema_metadata({b"memscan": json.dumps(meta).encode()})
    folder.models.mkdir(exist_ok=True)
    folder.write_table(t_, folder.model_file(k))
    return info


@torch.no_grad()
def _predict_given(model, source, *, batch_size: int, dtype):
    """(p(given label), argmax == given label) per sample, batch by batch: no [N, K] array."""
    model.eval()
    n = len(source)
    p_given, correct = np.empty(n, np.float32), np.empty(n, bool)
    for idx in torch.arange(n).split(batch_size):
        x, y = source.batch(idx)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            p = model(x).float().softmax(1)
        sl = slice(int(idx[0]), int(idx[-1]) + 1)
        p_given[sl] = p.gather(1, y[:, None])[:, 0].cpu().numpy()
        correct[sl] = (p.argmax(1) == y).cpu().numpy()
    return p_given, correct


def _load_model_file(folder: RunFolder, k: int, mask: np.ndarray, paths, kcfg: RunConfig) -> dict | None:
    """A finished model's file when it matches the plan (same samples, subset and recipe, probabilities in
    [0, 1]); None to (re)train."""
    f = folder.model_file(k)
    if not f.exists() and not f.is_symlink():
        return None
    if not is_regular_file(f) and not f.is_symlink():
        raise RunFolderError(f"'{f}' is not a file (a folder or a pipe where memscan keeps model {k + 1}); remove it "
                             "and resume")
    want = kcfg.to_dict()
    try:
        if not is_regular_file(f):
            raise ValueError("not a regular file")
        t = pq.read_table(f)
        meta = json.loads(t.schema.metadata[b"memscan"])
        p = t.column("p_given").to_numpy()
        saved = meta.get("config")
        if isinstance(saved, dict):
            saved = saved_config(saved)
        ok = (t.column("path").to_pylist() == list(paths)
              and np.array_equal(t.column("in_subset").to_numpy(), mask)
              and bool(np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all())
              # trained with this plan's recipe (a key an older version did not write is not held against it)
              and isinstance(saved, dict) and all(saved.get(key, v) == v for key, v in want.items()
                                                   if key not in STOP_RULE_OPTIONS))
        info = {"train_acc": float(meta["train_acc"]), "held_out_acc": float(meta["held_out_acc"]), "seconds": 0.0}
    except Exception:
        ok = False
    if not ok:
        f.unlink()   # ours (models/model-NNNN.parquet in a memorization folder), and not usable: redone
        return None
    return info


def _write_estimate(folder: RunFolder, prep, cfg: RunConfig, plan: Plan, masks, seconds: float) -> dict:
    p = np.stack([pq.read_table(folder.model_file(k), columns=["p_given"]).column(0).to_numpy()
                  for k in range(plan.models)])
    metas = [json.loads(pq.read_schema(folder.model_file(k)).metadata[b"memscan"]) for k in range(plan.models)]
    est = estimate(masks, p)
    reliability = split_half(masks, p)
    t = prep.table
    meta = {"kind": "memorization", "memscan_version": __version__, "models": plan.models, "subset": plan.subset,
            "epochs": cfg.max_epochs, "config": cfg.to_dict(), "split_half": reliability,
            "train_acc": float(np.mean([m["train_acc"] for m in metas])),
            "held_out_acc": float(np.mean([m["held_out_acc"] for m in metas])),
            "dataset": {"location": str(Path(t.location).resolve()), "n": len(t), "fingerprint": t.fingerprint(),
                        "classes": t.class_names},
            "seconds": seconds, "no_estimate": int((~np.isfinite(est["memorization"])).sum()),
            "columns": {"memorization": "p_in - p_out of the given label; higher = more memorized",
                        "memorization_se": "standard error of memorization (Welch)",
                        "p_in": "mean p(given label) over the models that trained on the sample",
                        "p_out": "mean p(given label) over the models that did not (consistency, C-score-like); "
                                 "lower = more atypical",
                        "n_in": "models that trained on the sample", "n_out": "models that did not"}}
    table = pa.table({"sample_id": np.arange(len(t), dtype=np.int64), "path": t.paths,
                      "label": prep.labels.astype(np.int64), **{k: v for k, v in est.items()}})
    table = table.replace_schema_metadata({b"memscan": json.dumps(meta).encode()})
    folder.write_table(table, folder.memorization)
    return {"out_dir": str(folder.path), "file": str(folder.memorization), "n": len(t), **{
        k: meta[k] for k in ("models", "subset", "epochs", "split_half", "train_acc", "held_out_acc", "seconds",
                             "no_estimate")},
        "top": _top(t.paths, est, 10)}


def _top(paths, est: dict, k: int) -> list[dict]:
    order = np.argsort(-np.nan_to_num(est["memorization"], nan=-np.inf), kind="stable")[:k]
    return [{"path": paths[i], "memorization": float(est["memorization"][i]),
             "se": float(est["memorization_se"][i]), "p_out": float(est["p_out"][i])} for i in order]


def read_memorization(path) -> tuple:
    """(DataFrame, metadata) of a memorization.parquet (or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / MEMORIZATION
    if p.exists() and not is_regular_file(p):
        raise ReportError(f"'{p}' is not a file (a folder or a pipe); pass a memorization.parquet written by "
                          "'memscan memorization'")
    try:
        t = pq.read_table(p)
        meta = json.loads(t.schema.metadata[b"memscan"])
        if meta.get("kind") != "memorization":
            raise ValueError("kind")
    except FileNotFoundError:
        raise ReportError(f"no {MEMORIZATION} at '{p}'; run 'memscan memorization DATASET' first") from None
    except Exception as e:
        raise ReportError(f"'{p}' is not a memorization file written by 'memscan memorization' "
                          f"({type(e).__name__})") from None
    return t.to_pandas(), meta


def _model_outputs(reference, paths, models: int):
    """(in_mask [K, N], p_given [K, N]) in the order of ``paths`` from the model files of the ``models`` models a
    memorization folder's estimate averages, or None (a bare memorization.parquet, files missing or not matching
    it; files of an interrupted extension beyond ``models`` are not the estimate's)."""
    folder = Path(reference)
    if not folder.is_dir() or not isinstance(models, int) or models < 2:
        return None
    files = [RunFolder(folder).model_file(k) for k in range(models)]
    if not all(is_regular_file(f) for f in files):
        return None
    try:
        tables = [pq.read_table(f, columns=["path", "in_subset", "p_given"]) for f in files]
        if any(t.column("path").to_pylist() != list(paths) for t in tables):
            return None
        return (np.stack([t.column("in_subset").to_numpy(zero_copy_only=False) for t in tables]),
                np.stack([t.column("p_given").to_numpy() for t in tables]))
    except Exception:
        return None


def compare(run, reference, *, level: float = 0.5) -> dict:
    """A run's columns against a reference estimate, matched by path: the agreement table
    (``memorization.agreement``) and the ``memorized``/``atypical`` categories' precision and recall
    against reference memorization above ``level``, each beside ``split_half_precision``: what the same number
    of flags reaches when taken from half the reference models (when the folder holds the model files)."""
    from .memorization import COMPARED, agreement, flag_precision, split_half_precision
    from .report import checked_scores, frame_and_name
    ref, meta = read_memorization(reference)
    df, name = frame_and_name(run, ["path", "category", "memorization_score", "csg", "sgal", "csl", "learning_time",
                                    "aum", "p_given", "mislabel_score"])
    checked_scores(df, ["memorization_score", "csg", "sgal", "csl", "learning_time", "aum", "p_given",
                        "mislabel_score"], name)
    joined = df.merge(ref[["path", "memorization"]], on="path", how="inner")
    if len(joined) < 10:
        raise ReportError(f"only {len(joined)} samples of '{name}' are in the reference (matched by path); compare a "
                          "run and a reference of the same dataset")
    mem = joined["memorization"].to_numpy()
    rows = agreement(mem, {k: f(joined) for k, f in COMPARED.items()}, meta.get("split_half"))
    cats = {c: flag_precision(joined["category"].to_numpy() == c, mem, level) for c in ("memorized", "atypical")}
    halves = _model_outputs(reference, ref["path"], meta.get("models"))
    for c in cats.values():   # the same number of flags taken from half the reference models, against the other
        c["split_half_precision"] = None if halves is None else split_half_precision(*halves, c["flagged"], level)
    return {"run": name, "reference": str(reference), "matched": len(joined), "of_run": len(df), "of_reference": len(ref),
            "split_half": meta.get("split_half"), "agreement": rows, "categories": cats,
            "notes": _compare_notes(run, meta, len(joined), len(df), len(ref))}


def _compare_notes(run, meta: dict, matched: int, of_run: int, of_reference: int) -> list[str]:
    """What the reader of an agreement table must know: samples are matched by path alone."""
    from .report import read_metadata
    notes = []
    if not hasattr(run, "columns"):
        ours = (meta.get("dataset") or {}).get("fingerprint")
        if ours is not None and read_metadata(run).dataset.fingerprint != ours:
            notes.append("the run's dataset is not the reference's (other files, sizes, dates or labels): samples are "
                         "matched by path alone, so the agreement is only meaningful if those paths hold the same images")
    if matched < max(of_run, of_reference):
        notes.append(f"{matched} samples are in both: {of_run - matched} of the run's and {of_reference - matched} of "
                     "the reference's are not compared")
    return notes
