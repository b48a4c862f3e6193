"""The training loop: one flat loop that records per-sample signals and decides when to stop.

``fit`` trains ``model`` on an ``ImageSource`` and, at every step, feeds the ``Recorder`` with that
very step's logits and per-sample input-gradient norms, from which it takes loss, margin and
correctness (the input gradient costs one extra conv over the stem's output gradient: what makes CSG
nearly free; ``stem_grad``). After each
epoch it hands the epoch's record to ``on_record`` (the trajectory writer), updates the stop
detector and reports a summary through ``on_epoch``. It never prints.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import RunConfig
from .data.loader import batch_bounds, batch_slices, epoch_generator, epoch_order
from .frozen_body import fold_frozen_batchnorm
from .models import is_head_parameter, train_mode
from .signals import Recorder, StepSignals, input_grad_sq, weight_norms
from .stopping import StopRule
from .stem_grad import StemGrad


# ---------------------------------------------------------------- device and precision

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError
        raise ConfigError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        from .errors import ConfigError
        raise ConfigError("--device mps: Apple MPS is not available; use --device cpu or auto")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16/AMX). Elsewhere bf16 autocast on the
    CPU is emulated and was measured 15x slower than fp32 (BENCHMARKS.md)."""
    if os.environ.get("MEMSCAN_CPU_BF16") == "0":   # tests prove the fp32 path on any CPU
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            from .errors import ConfigError
            raise ConfigError("--precision fp16 needs a GPU; on the CPU use bf16 or fp32")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


# ---------------------------------------------------------------- optimiser and schedule

# A prior model fine-tunes best with its body at a tenth of the rate (AUROC 0.990 against 0.987 at the full rate,
# BENCHMARKS.md §14). A head-only phase for a new head (``--head-epochs``) gained nothing measurable on top of
# that (0.967 with one epoch, 0.968 without), so it is off unless asked for
FINETUNE_BODY_LR = 0.1
FINETUNE_HEAD_EPOCHS = 0.0


def finetune_plan(model: nn.Module, cfg: RunConfig) -> tuple[float, float]:
    """(head-only epochs, body learning-rate factor) for this run: the user's values where given, else the
    measured defaults with a prior (``--weights``/``--pretrained``) and (0, 1) from scratch."""
    prior = bool(cfg.weights or cfg.pretrained)
    new_head = prior and bool(getattr(unwrap(model), "memscan_new_head", cfg.pretrained))
    head_epochs = cfg.head_epochs if cfg.head_epochs is not None else (FINETUNE_HEAD_EPOCHS if new_head else 0.0)
    body_lr = cfg.body_lr if cfg.body_lr is not None else (FINETUNE_BODY_LR if prior else 1.0)
    return (0.0, 0.0) if cfg.freeze else (float(head_epochs), float(body_lr))


def make_optimizer(model: nn.Module, cfg: RunConfig, body_lr: float = 1.0, head_epochs: float = 0.0):
    """One parameter group (in ``parameters()`` order: checkpoints of earlier versions resume), or (head, body)
    when the body learns at another rate, waits for the head, or is frozen; each group's ``lr_scale`` is its
    factor of ``cfg.lr``."""
    plain = unwrap(model)
    params = list(plain.parameters())
    head = [p for n, p in plain.named_parameters() if p.requires_grad and is_head_parameter(plain, n)]
    body = [p for n, p in plain.named_parameters() if p.requires_grad and not is_head_parameter(plain, n)]
    if body_lr == 1.0 and head_epochs == 0 and len(head) + len(body) == len(params):
        groups = [{"params": params, "lr_scale": 1.0}]
    else:
        groups = [{"params": head, "lr_scale": 1.0}] + ([{"params": body, "lr_scale": body_lr}] if body else [])
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(opt, steps_per_epoch: int, cfg: RunConfig, head_epochs: float = 0.0):
    """The warm-up + schedule of ``lr_factor`` for every group; a body group (the second) also waits
    ``head_epochs`` at rate 0 while the new head learns alone, then warms up again over ``warmup_epochs``
    (its momentum gathered gradients meanwhile: a jump to the full rate would spend them in one step)."""
    head_steps = round(head_epochs * steps_per_epoch)
    warm = max(1.0, cfg.warmup_epochs * steps_per_epoch)
    def body(s):
        if s < head_steps:
            return 0.0
        ramp = 1.0 if head_steps == 0 else min(1.0, 0.1 + 0.9 * (s - head_steps) / warm)
        return ramp * lr_factor(s, steps_per_epoch, cfg)
    fns = [lambda s: lr_factor(s, steps_per_epoch, cfg), body][:len(opt.param_groups)]
    return torch.optim.lr_scheduler.LambdaLR(opt, fns)


def lr_factor(step: int, steps_per_epoch: int, cfg: RunConfig) -> float:
    """Multiplier of cfg.lr at a step: linear warm-up from 10%, then the schedule."""
    e = step / steps_per_epoch
    if cfg.schedule == "onecycle":
        peak = max(cfg.warmup_epochs, 0.3 * cfg.max_epochs)
        return 0.1 + 0.9 * e / peak if e < peak else max(0.0, (cfg.max_epochs - e) / (cfg.max_epochs - peak))
    if e < cfg.warmup_epochs:
        return 0.1 + 0.9 * e / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(1e-9, cfg.max_epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (e - cfg.warmup_epochs) / span)))
    return 1.0


# ---------------------------------------------------------------- evaluation passes

@torch.no_grad()
def predict_probs(model, source, *, batch_size: int, dtype, out: np.ndarray | None = None,
                  flip: bool = False) -> np.ndarray:
    """Softmax probabilities [N, K] in fp32 (eval mode, no augmentation), written batch by batch into
    ``out`` when given (e.g. a ``np.memmap`` for N x K too large for RAM), else into a new array.
    ``flip``: the mean of the image's and its mirror image's probabilities (test-time augmentation, for
    models trained with flips: +0.001-0.004 AUROC of ``mislabel_score`` on every CIFAR-10 noise measured,
    BENCHMARKS.md §13)."""
    model.eval()
    for idx in torch.arange(len(source)).split(batch_size):
        x, _ = source.batch(idx)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            p = model(x).float().softmax(1)
            if flip:
                p = (p + model(x.flip(-1)).float().softmax(1)) / 2
        p = p.cpu().numpy()
        if out is None:
            out = np.empty((len(source), p.shape[1]), dtype=np.float32)
        out[idx[0].item():idx[-1].item() + 1] = p
    return out


@torch.no_grad()
def evaluate(model, source, *, batch_size: int, dtype) -> dict:
    """Mean loss and accuracy on a held-out source (eval mode, no augmentation)."""
    model.eval()
    tot_loss, tot_ok, n = 0.0, 0, 0
    for idx in torch.arange(len(source)).split(batch_size):
        x, y = source.batch(idx)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(x).float()
        tot_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        tot_ok += int((logits.argmax(1) == y).sum())
        n += len(idx)
    return {"val_loss": tot_loss / n, "val_acc": tot_ok / n}


def exact_pass(model, source, *, batch_size: int, dtype, want_probs: bool = False):
    """Exact per-sample input-gradient squared norms in eval mode, no augmentation.

    In eval mode BatchNorm uses running statistics, so samples in a batch do not interact and the
    gradient of the summed loss w.r.t. x[i] is exactly sample i's own gradient. Only the input
    gradient is asked for, so no weight gradients are computed. Returns (grad_sq, probs or None).
    """
    model.eval()
    n = len(source)
    gsq = torch.empty(n)
    probs = None
    for idx in torch.arange(n).split(batch_size):
        x, y = source.batch(idx)
        x.requires_grad_(True)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(x)
        logits = logits.float()
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
        gsq[idx] = input_grad_sq(g, batch_size=len(idx), reduction="sum").cpu()
        if want_probs:
            if probs is None:
                probs = torch.empty(n, logits.shape[1])
            probs[idx] = logits.detach().softmax(1).cpu()
    return gsq.numpy(), (probs.numpy() if probs is not None else None)


# ---------------------------------------------------------------- the loop

def train_step(model, x, y, opt, scaler, *, dtype=torch.float32, label_smoothing: float = 0.0,
               stem: StemGrad | None = None, record: torch.Tensor | None = None):
    """One optimisation step that also returns the raw per-sample signals of this very step:
    (batch loss, ``StepSignals``). The input gradient comes from the same backward pass as the
    weight gradients: x is a leaf that requires grad, or, with a verified ``stem``, from the
    gradient at the stem conv's output (faster; see ``stem_grad``). An unverified ``stem`` is
    checked against autograd in this step and marked verified, or rejected if it disagrees. The
    step is the bare loop's step plus that and one reduction; the rest of the per-sample
    arithmetic is the recorder's, block-wise.

    ``record`` (bool [B], frozen body only, ``--input-grad-every``): the samples whose input gradient
    is wanted (None: all). The batch then runs as two forward passes: the recorded part with autograd
    down to the input, the rest with no input that requires grad, so autograd starts at the head and
    the frozen body runs forward only (a linear probe's cost); their gradient is NaN (not recorded).
    A frozen body's BatchNorm is in eval mode, so the split changes no value, and the loss is the
    mean over the whole batch as in one pass."""
    x = x.detach()
    if dtype != torch.float32 and x.is_floating_point():
        # The leaf is the tensor the first conv reads: autocast would cast x to ``dtype`` there
        # anyway (same values), and an fp32 leaf adds a cast back in the backward pass, a large
        # share of the recording cost on CPU. The gradient's values are the same either way.
        x = x.to(dtype)
    split = record is not None and not bool(record.all())
    use_stem = stem is not None and stem.verified
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        if not split:
            xr = _input_leaf(x, stem, use_stem)
            logits = model(xr)
        else:
            if stem is not None:
                stem.detach()       # its hook would start autograd at the stem for the forward-only part
            rec_idx = record.nonzero()[:, 0]
            if not len(rec_idx):    # a batch of samples not taken this epoch (``group_recorded``)
                xr, logits = None, model(x)
            else:
                rest_idx = (~record).nonzero()[:, 0]
                xr = _input_leaf(x[rec_idx], stem, use_stem)
                recorded = model(xr)
                if stem is not None:
                    stem.detach()   # its hook would start autograd at the stem for the rest too (its gradient
                                    # arrives through the leaf's own hook, kept by the recorded part)
                parts = [recorded, model(x[rest_idx])]
                inverse = torch.empty_like(record, dtype=torch.long)
                inverse[torch.cat([rec_idx, rest_idx])] = torch.arange(len(record), device=record.device)
                logits = torch.cat(parts)[inverse]
    logits = logits.float()
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    gnorm = _input_grad_norm(xr, stem, use_stem, dtype) if xr is not None else None
    if split:
        full = torch.full((len(y),), float("nan"), device=logits.device)
        if gnorm is not None:
            full[rec_idx] = gnorm
        gnorm = full
    if scaler.is_enabled():
        # undone now: update() below changes the scale in place. The private async getter avoids a
        # device sync per step; get_scale() is the public fallback.
        get = getattr(scaler, "_get_scale_async", None)
        scale = get() if get is not None else None
        gnorm = gnorm / (scale if scale is not None else scaler.get_scale())
    scaler.step(opt)
    scaler.update()
    # the mean loss makes x.grad[i] 1/B of sample i's own gradient
    return loss.detach(), StepSignals(logits.detach(), y, gnorm, float(len(y)), label_smoothing)


def _input_leaf(x, stem: StemGrad | None, use_stem: bool):
    """x prepared for the input gradient: a leaf that requires grad, unless the verified stem path
    takes it from the stem conv's output; an unverified stem captures too, to be checked."""
    if not use_stem:
        x.requires_grad_(True)
    if stem is not None:
        stem.attach()
    return x


def _input_grad_norm(x, stem: StemGrad | None, use_stem: bool, dtype) -> torch.Tensor:
    """Per-sample ||x.grad_i|| after the backward pass, from the stem path or autograd; checks an
    unverified stem path against autograd's value and marks it verified or rejected."""
    if use_stem:
        return stem.norm()
    g = x.grad
    gnorm = torch.linalg.vector_norm(g, dim=tuple(range(1, g.ndim)), dtype=torch.float32)
    if stem is not None:
        got = stem.norm()
        # an overflowed fp16 step (inf gradients, skipped by the GradScaler) proves nothing: the
        # check waits for a step with finite values
        finite = torch.isfinite(gnorm) & torch.isfinite(got)
        if bool(finite.any()):
            agree = bool(((got - gnorm).abs() <= stem_tolerance(dtype) * gnorm + 1e-30)[finite].all())
            stem.verified, stem.rejected = agree, not agree
        if stem.verified:   # every step's value from one path, however a run was resumed
            gnorm = got
    return gnorm


def stem_tolerance(dtype: torch.dtype) -> float:
    """Relative agreement the stem path must show with autograd's input gradient on the first step:
    float rounding stays below 1e-5 in fp32 and below a fraction of the resolution of bf16/fp16
    (7.5e-4 seen where bf16 is emulated, AVX2); a second path from x to the loss (which the stem
    path would miss) shows up far above it."""
    return max(1e-3, torch.finfo(dtype).eps / 2)


@dataclass
class FitResult:
    epochs: int                          # epochs trained
    peak_epoch: int | None               # confirmed peak of the stop curve (0-based), None if none
    stop_reason: str
    curves: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    nan_epoch: int | None = None
    anneal: dict | None = None           # {"epochs", "lr", "train_acc", "seconds"} of the epochs after the stop


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (norms and checkpoints use it)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def _oom_types():
    return tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                             getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None), MemoryError) if t)


def _tensors(state):
    """Every tensor in a nested dict/list state (the stop rule's)."""
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for v in state.values():
            yield from _tensors(v)
    elif isinstance(state, (list, tuple)):
        for v in state:
            yield from _tensors(v)


def _apply_checkpoint(resume: dict, model, opt, sched, scaler, rule, n: int) -> list[dict]:
    """Restore the training state of a checkpoint (``RunFolder.load_checkpoint`` checked its keys and types);
    one that does not fit this model, optimizer or data is refused in one line, never half applied to a run."""
    from .errors import RunFolderError
    if len(resume["optimizer"].get("param_groups", ())) != len(opt.param_groups):
        raise RunFolderError("the checkpoint's optimizer has a different layout (a fine-tuning run saved by an "
                             "older memscan, or other --freeze/--body-lr): start the run again with --overwrite")
    try:
        unwrap(model).load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        torch.set_rng_state(resume["rng"])
        rule.load_state_dict(resume["rule"])
        for p in (p for g in opt.param_groups for p in g["params"]):
            for v in opt.state.get(p, {}).values():
                if isinstance(v, torch.Tensor) and v.dim() and v.shape != p.shape:
                    raise ValueError(f"an optimizer buffer of shape {tuple(v.shape)} for a parameter of {tuple(p.shape)}")
        per_sample = [v for v in _tensors(resume["rule"]) if v.dim() == 1 and v.dtype != torch.uint8]
        if any(len(v) != n for v in per_sample):
            raise ValueError(f"the stop rule's per-sample state does not have {n} samples")
        return [dict(c) for c in resume["curves"]]
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise RunFolderError(f"the run folder's checkpoint does not fit this run ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else 'damaged'}); it was not resumed: start "
                             "a new run with --overwrite") from None


def fit(model: nn.Module, source, cfg: RunConfig, *, recorder: Recorder, on_record=None, on_epoch=None,
        on_step=None, val_source=None, rank: int = 0, world: int = 1, resume: dict | None = None,
        on_checkpoint=None, stop_decider=None, stem_grad: bool = True, on_anneal=None) -> FitResult:
    """Train with recording. ``resume``: a state from ``on_checkpoint`` (continues after its epoch,
    bit-identical on the CPU). ``on_checkpoint(state)`` is called at the end of every epoch.
    ``stop_decider(bool) -> bool``: makes one process's stop decision everyone's (DDP broadcast).
    ``on_anneal(info)``: after each annealing epoch (``_anneal``), which follow the stop.
    ``stem_grad``: take the input gradient from the stem conv's output gradient where the first step
    confirms it equals autograd's (module ``stem_grad``); False keeps autograd's throughout."""
    device = source.device
    dtype = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    head_epochs, body_lr = finetune_plan(model, cfg)
    opt = make_optimizer(model, cfg, body_lr, head_epochs)
    n = len(source)
    steps_per_epoch = len(batch_bounds(n, cfg.batch_size, world))
    sched = make_schedule(opt, steps_per_epoch, cfg, head_epochs)
    rule = StopRule(cfg)
    curves, t0 = [], time.perf_counter()
    start_epoch, stopped = 0, False
    if resume is not None:
        curves = _apply_checkpoint(resume, model, opt, sched, scaler, rule, n)
        start_epoch, stopped = resume["epoch"] + 1, bool(resume["stopped"])
    epoch = start_epoch - 1
    step_state = {"stem": None, "tried": False, "net": None,
                  "rotation": grad_rotation(n, cfg.input_grad_every, cfg.seed)}
    run_epoch = lambda e, schedule, grads=True: _train_epoch(
        model, source, cfg, opt, scaler, schedule, recorder, e, step_state, dtype=dtype, rank=rank, world=world,
        on_step=on_step, stem_grad=stem_grad, input_grads=grads)
    for epoch in range(start_epoch, start_epoch if stopped else cfg.max_epochs):
        te = time.perf_counter()
        if not run_epoch(epoch, sched):
            return FitResult(epoch, rule.peak_epoch, f"loss became NaN/inf in epoch {epoch + 1}", curves,
                             time.perf_counter() - t0, nan_epoch=epoch)
        rec, summary = _end_epoch(model, source, cfg, recorder, opt, val_source, dtype=dtype, world=world)
        summary["seconds"] = time.perf_counter() - te
        curves.append(summary)
        if on_record is not None:
            on_record(rec)
        stop_now = rule.update(rec, summary) and cfg.stop == "peak"
        if stop_decider is not None:
            stop_now = stop_decider(stop_now)
        summary["peak_epoch"] = rule.peak_epoch
        if on_epoch is not None:
            on_epoch(summary)
        if on_checkpoint is not None:
            on_checkpoint({"epoch": epoch, "stopped": stop_now or epoch + 1 >= cfg.max_epochs,
                           "model": unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                           "rng": torch.get_rng_state(), "rule": rule.state_dict(),
                           "curves": [dict(c) for c in curves]})
        if stop_now:
            break
    anneal = None
    if cfg.anneal_epochs and curves:
        anneal = _anneal(run_epoch, opt, recorder, cfg, first=len(curves), on_anneal=on_anneal)
        if anneal.get("nan_epoch") is not None:
            return FitResult(len(curves), rule.peak_epoch, f"loss became NaN/inf in annealing epoch "
                             f"{anneal['nan_epoch'] + 1}", curves, time.perf_counter() - t0,
                             nan_epoch=anneal["nan_epoch"], anneal=anneal)
    return FitResult(len(curves), rule.peak_epoch, _stop_reason(cfg, rule), curves, time.perf_counter() - t0,
                     anneal=anneal)


def _end_epoch(model, source, cfg: RunConfig, recorder: Recorder, opt, val_source, *, dtype, world: int):
    """The epoch's record (with ``--signal exact``'s eval-mode gradients, reduced over processes) and its
    curve values: the record's summary, the learning rate, the weight norms and the validation figures."""
    if cfg.signal == "exact":
        gsq, _ = exact_pass(model, source, batch_size=max(cfg.batch_size, 256), dtype=dtype)
        recorder.record(torch.arange(len(source)), grad_sq=torch.from_numpy(gsq))
    if world > 1:
        recorder.all_reduce()   # every process now holds every sample's values for the epoch
    rec = recorder.end_epoch()
    summary = dict(rec.summary, lr=opt.param_groups[0]["lr"], **weight_norms(unwrap(model)))
    if val_source is not None:
        summary.update(evaluate(model, val_source, batch_size=512, dtype=dtype))
    return rec, summary


def _stop_reason(cfg: RunConfig, rule: StopRule) -> str:
    """Why training ended, as run.json and the report say it."""
    if cfg.stop != "none":
        return rule.reason or f"reached max_epochs={cfg.max_epochs} with no peak and no converged ranking"
    reason = f"trained to max_epochs={cfg.max_epochs} (--stop none)"
    if rule.peak_epoch is not None:
        reason += f"; {rule.curve.replace('_', ' ')} peaked at epoch {rule.peak_epoch + 1}"
    return reason


def grad_rotation(n: int, every: int, seed: int) -> torch.Tensor | None:
    """``--input-grad-every K``: each sample's fixed offset in [0, K); its input gradient is taken in the
    epochs e with (offset + e) % K == 0, so exactly once in any K consecutive epochs, about a K-th of
    every batch. Seeded, so a resumed run records the same epochs. None for K = 1 (every epoch)."""
    if every <= 1:
        return None
    return torch.randint(0, every, (n,), generator=torch.Generator().manual_seed(seed + 7919))


def group_recorded(order: torch.Tensor, taken: torch.Tensor, step: int) -> torch.Tensor:
    """``order`` rearranged so that the samples whose input gradient this epoch takes (``taken``, aligned
    with ``order``) fill whole batches of ``step``, spread evenly among the batches of the others; the
    remainders of both share the last one or two batches. A split batch runs its recorded part at a
    third of the batch size, where a CPU's convolutions are 17% slower per image (resnet18, 224 px):
    whole batches keep every pass at full size. Which samples are taken does not depend on the labels,
    so each batch is still a uniform random draw."""
    a, b = order[taken], order[~taken]
    na, nb = len(a) // step, len(b) // step
    chunks = sorted([((i + 0.5) / na, a[i * step:(i + 1) * step]) for i in range(na)]
                    + [((i + 0.5) / nb, b[i * step:(i + 1) * step]) for i in range(nb)], key=lambda c: c[0])
    return torch.cat([c for _, c in chunks] + [a[na * step:], b[nb * step:]])


def _train_epoch(model, source, cfg: RunConfig, opt, scaler, sched, recorder: Recorder, epoch: int, state: dict, *,
                 dtype, rank: int, world: int, on_step, stem_grad: bool, input_grads: bool = True) -> bool:
    """One pass over this process's share of the data, every step recorded. ``sched`` is stepped after
    each step (None: the learning rate stays as set). ``state`` carries the stem-gradient path between
    epochs and the ``grad_rotation``. ``input_grads=False`` (a frozen body only): no sample's input
    gradient, the body runs forward only. False when the loss became NaN/inf (the epoch is abandoned)."""
    n = len(source)
    steps_per_epoch = len(batch_bounds(n, cfg.batch_size, world))
    train_mode(model)   # the wrapper (DDP, compile) too; frozen BatchNorm layers stay in eval
    if state["net"] is not None and state["net"] is not model:
        train_mode(state["net"])
    recorder.start_epoch(epoch)
    gen = epoch_generator(cfg.seed, epoch, stream=1 + rank)
    losses = []
    order, rotation = epoch_order(n, cfg.seed, epoch), state["rotation"]
    if rotation is not None and input_grads:
        order = group_recorded(order, (rotation[order] + epoch) % cfg.input_grad_every == 0, cfg.batch_size * world)
    for step, idx in enumerate(batch_slices(order, cfg.batch_size, rank=rank, world=world)):
        x, y = source.batch(idx, augment=cfg.augment, generator=gen)
        if state["net"] is None:
            # a frozen body trains through a copy with its BatchNorm folded into the convs (``frozen_body``);
            # DDP must see its own wrapper's forward, and torch.compile fuses by itself
            folded = fold_frozen_batchnorm(model, x) if cfg.freeze and world == 1 and not cfg.compile else None
            state["net"] = folded if folded is not None else model
            train_mode(state["net"])
        net = state["net"]
        if state["stem"] is None and not state["tried"]:
            state["tried"] = True
            if stem_grad and not cfg.compile:
                state["stem"] = StemGrad.find(unwrap(net), x)
        stem = state["stem"]
        record = None
        if cfg.freeze and not input_grads:
            record = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        elif state["rotation"] is not None:
            record = ((state["rotation"][idx] + epoch) % cfg.input_grad_every == 0).to(y.device)
        try:
            loss, stats = train_step(net, x, y, opt, scaler, dtype=dtype, label_smoothing=cfg.label_smoothing,
                                     stem=stem, record=record)
            if stem is not None and stem.rejected:   # it disagreed with autograd: not for this model
                stem.detach()
                state["stem"] = None
        except _oom_types() as e:
            from .errors import TrainingError
            raise TrainingError(
                f"out of memory on {source.device} at batch size {cfg.batch_size} ({type(e).__name__}); pass a "
                f"smaller --batch-size (e.g. {max(1, cfg.batch_size // 2)}) or --image-size"
                + ("" if source.device.type != "cpu" else ", or --cache-memory 0 to keep the decoded images on disk")
            ) from None
        recorder.record_step(idx, stats)
        if sched is not None:
            sched.step()
        losses.append(loss)
        if on_step is not None:
            on_step(step + 1, steps_per_epoch)
        if len(losses) == 16:    # checked every 16 steps: each check is a device sync
            if not bool(torch.isfinite(torch.stack(losses)).all()):
                if state["stem"] is not None:
                    state["stem"].detach()
                return False
            losses.clear()
    if state["stem"] is not None:
        state["stem"].detach()    # no capture outside training steps (prediction and exact passes)
    return not losses or bool(torch.isfinite(torch.stack(losses)).all())


def _anneal(run_epoch, opt, recorder: Recorder, cfg: RunConfig, *, first: int, on_anneal) -> dict:
    """``cfg.anneal_epochs`` more epochs at ``cfg.anneal_lr`` x ``cfg.lr``, after the stop. A short run stops
    far from fitted, where the model's verdict on a hard but correct image and on a mislabeled one look
    alike; a tenth of the rate for one epoch is the step-decay jump in fit (CIFAR-10: 64% -> 78% of the
    labels) and separates them better (BENCHMARKS.md §11). Its epochs stay out of the trajectories and
    the scores' windows: only the model, hence the stop point's probabilities, moves."""
    # never above the rate training ended at: a cosine/onecycle schedule run to its end is already annealed
    lr = float(f"{min(cfg.lr * cfg.anneal_lr, opt.param_groups[0]['lr']):.6g}")   # 0.00125, not 0.0012500000000000002
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    t, acc = time.perf_counter(), math.nan
    for a in range(cfg.anneal_epochs):
        # no score reads an annealing epoch's input gradients: a frozen body runs forward only
        if not run_epoch(first + a, None, False):
            return {"epochs": a, "lr": lr, "nan_epoch": first + a}
        acc = recorder.end_epoch().summary["train_acc"]
        if on_anneal is not None:
            on_anneal({"anneal_epoch": a, "anneal_epochs": cfg.anneal_epochs, "train_acc": acc, "lr": lr})
    return {"epochs": cfg.anneal_epochs, "lr": lr, "train_acc": acc, "seconds": time.perf_counter() - t}
