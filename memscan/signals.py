"""Per-sample and per-epoch signals, fed explicitly by the training loop (no hooks).

``Recorder`` keeps one epoch of per-sample values (O(N) floats, whatever the number of epochs);
each finished epoch is handed to the trajectory writer and forgotten. ``input_grad_sq`` turns the
batch input gradient into per-sample squared norms; ``weight_norms`` works on the model after each
epoch (the stop rule is in ``stopping``). Everything here is testable with fake tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

SAMPLE_FIELDS = ("grad_sq", "loss", "margin", "correct", "pred")


def input_grad_sq(x_grad: torch.Tensor, *, batch_size: int, reduction: str = "mean",
                  loss_scale: float = 1.0) -> torch.Tensor:
    """Per-sample ||d loss_i / d x_i||^2 from the batch input gradient, in fp32.

    With ``reduction="mean"`` the batch loss is (1/B) sum_i loss_i, so x.grad[i] is 1/B of the
    per-sample gradient; a GradScaler multiplies it by ``loss_scale``. Both are undone here.
    """
    g = x_grad.detach()
    factor = (batch_size if reduction == "mean" else 1.0) / loss_scale
    # one strided reduction in fp32 on the gradient's own layout: flattening a channels_last
    # gradient would copy it, a measurable share of the recording cost at small batches
    norm = torch.linalg.vector_norm(g, dim=tuple(range(1, g.ndim)), dtype=torch.float32)
    return norm.square() * (factor * factor)


def margin_and_correct(logits: torch.Tensor, y: torch.Tensor):
    """(margin_i, correct_i, pred_i): given-label logit minus the best other logit (AUM's margin),
    whether the argmax is the given label, and the argmax. The training step already has the loss."""
    logits = logits.detach().float()
    given = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    pred = logits.argmax(1)
    return given - other, pred == y, pred


def per_sample_stats(logits: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0):
    """(loss_i, margin_i, correct_i, pred_i) in fp32 (pred: int64), for callers that have only the logits."""
    loss = nn.functional.cross_entropy(logits.detach().float(), y, reduction="none",
                                       label_smoothing=label_smoothing)
    return (loss, *margin_and_correct(logits, y))


@dataclass
class StepSignals:
    """What one training step hands the recorder: the raw material of its per-sample signals.

    The per-sample arithmetic (loss, margin, correctness, squaring and scaling the gradient norm)
    is left to ``Recorder.record_step``, which does it for a block of steps at once: right after a
    backward pass every distinct small op runs with cold caches at several times its warm cost,
    so a dozen tiny ops per step would cost more than the input gradient itself."""
    logits: torch.Tensor            # [B, K], detached, fp32
    labels: torch.Tensor            # [B]
    grad_norm: torch.Tensor         # [B] ||x.grad_i||_2 in fp32, loss scaling already undone
    grad_factor: float = 1.0        # ||d loss_i / d x_i|| = grad_factor * grad_norm (B for a mean loss)
    label_smoothing: float = 0.0

    def per_sample(self) -> dict:
        """{grad_sq, loss, margin, correct, pred}: the values ``Recorder.record`` stores."""
        loss, margin, correct, pred = per_sample_stats(self.logits, self.labels, label_smoothing=self.label_smoothing)
        gsq = (self.grad_norm * self.grad_factor).square()
        # fp16 under a GradScaler: a step whose scaled gradients overflowed is skipped by the scaler and
        # its input gradients mean nothing; recorded as missing (NaN: no CSG term), never as inf
        gsq = torch.where(torch.isfinite(gsq), gsq, torch.full_like(gsq, float("nan")))
        return {"grad_sq": gsq, "loss": loss, "margin": margin, "correct": correct, "pred": pred}


@dataclass
class EpochRecord:
    epoch: int
    grad_sq: np.ndarray
    loss: np.ndarray
    margin: np.ndarray
    correct: np.ndarray
    summary: dict = field(default_factory=dict)
    pred: np.ndarray | None = None   # class predicted in the training step, int16, -1 where not seen (None: not recorded)


class Recorder:
    """Collects one epoch of per-sample signals at a time, indexed by sample id."""

    #: ``record_step`` buffers this many steps (or ``BLOCK_BYTES`` of logits) before computing
    #: their per-sample values in one pass. A flush costs ~1 ms on CPU (its ops run cold, right
    #: after a backward pass): ~30 us a step at 32 steps. Longer blocks measured slower per step,
    #: not faster (more small tensors kept alive between the steps' large buffers).
    BLOCK_STEPS = 32
    BLOCK_BYTES = 32 << 20

    def __init__(self, n_samples: int, device="cpu"):
        self.n = n_samples
        self.device = torch.device(device)
        self.epoch = None
        self._pending: list[tuple[torch.Tensor, StepSignals]] = []
        self._pending_bytes = 0
        self._alloc()

    def _alloc(self):
        nan = float("nan")
        self.grad_sq = torch.full((self.n,), nan, device=self.device)
        self.loss = torch.full((self.n,), nan, device=self.device)
        self.margin = torch.full((self.n,), nan, device=self.device)
        self.correct = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        self.pred = torch.full((self.n,), -1, dtype=torch.int16, device=self.device)   # 2 bytes a sample

    def start_epoch(self, epoch: int):
        self.epoch = epoch
        self._pending, self._pending_bytes = [], 0
        self._alloc()

    def record_step(self, idx, signals: StepSignals):
        """Store one training step's signals for samples ``idx``. Buffered: the values are in the
        tables after ``flush`` (called by ``end_epoch`` and ``all_reduce``)."""
        self._pending.append((idx, signals))
        self._pending_bytes += signals.logits.numel() * signals.logits.element_size()
        if len(self._pending) >= self.BLOCK_STEPS or self._pending_bytes >= self.BLOCK_BYTES:
            self.flush()

    def flush(self):
        """Compute and store the buffered steps' per-sample values, all steps in one pass."""
        if not self._pending:
            return
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        first = pending[0][1]
        factors = [s.grad_factor for _, s in pending]
        if all(f == factors[0] for f in factors):
            factor = factors[0]
        else:   # a short last batch (mean loss over fewer samples) or a changed loss scale
            factor = torch.cat([torch.full((len(s.labels),), float(s.grad_factor), device=s.grad_norm.device)
                                for _, s in pending])
        block = StepSignals(torch.cat([s.logits for _, s in pending]), torch.cat([s.labels for _, s in pending]),
                            torch.cat([s.grad_norm for _, s in pending]), factor, first.label_smoothing)
        idx = torch.cat([torch.as_tensor(i).to(block.labels.device) for i, _ in pending])
        self.record(idx, **block.per_sample())

    def record(self, idx, *, grad_sq=None, loss=None, margin=None, correct=None, pred=None):
        """Store values for samples ``idx``; any field left None keeps its earlier value."""
        idx = idx.to(self.device)
        for name, v in (("grad_sq", grad_sq), ("loss", loss), ("margin", margin)):
            if v is not None:
                getattr(self, name)[idx] = v.detach().float().to(self.device)
        if correct is not None:
            self.correct[idx] = correct.detach().to(self.device)
        if pred is not None:
            self.pred[idx] = pred.detach().to(self.device, torch.int16)

    def all_reduce(self, group=None):
        """Combine the processes' records of one epoch (torch.distributed): each sample was seen by
        exactly one process, so a sum over processes of (value where seen, else 0) is its value.
        One collective of 7 x N floats per epoch, whatever the number of steps (a class index is exact
        in fp32 up to 2^24). A gradient not taken (NaN: ``--input-grad-every``, an overflowed fp16 step)
        stays NaN."""
        import torch.distributed as dist
        self.flush()
        seen = ~torch.isnan(self.loss)
        packed = torch.stack([torch.nan_to_num(self.grad_sq), torch.nan_to_num(self.loss),
                              torch.nan_to_num(self.margin), self.correct.float(), seen.float(),
                              (self.pred + 1).float(), (~torch.isnan(self.grad_sq)).float()])
        dist.all_reduce(packed, group=group)
        count = packed[4]
        if bool((count > 1).any()):
            raise RuntimeError("a sample was recorded by more than one process in one epoch")
        nan = torch.full_like(count, float("nan"))
        self.grad_sq = torch.where(packed[6] > 0, packed[0], nan)
        self.loss = torch.where(count > 0, packed[1], nan)
        self.margin = torch.where(count > 0, packed[2], nan)
        self.correct = packed[3] > 0.5
        self.pred = (packed[5].round() - 1).to(torch.int16)

    def end_epoch(self) -> EpochRecord:
        self.flush()
        rec = EpochRecord(self.epoch, self.grad_sq.cpu().numpy(), self.loss.cpu().numpy(),
                          self.margin.cpu().numpy(), self.correct.cpu().numpy(), pred=self.pred.cpu().numpy())
        seen = ~np.isnan(rec.loss)
        rec.summary = {
            "epoch": self.epoch,
            "seen": int(seen.sum()),
            # with --input-grad-every, the mean over the samples whose gradient this epoch took
            "grad_mean": float(np.nanmean(rec.grad_sq)) if (~np.isnan(rec.grad_sq)).any() else math.nan,
            "loss_mean": float(np.nanmean(rec.loss)) if seen.any() else math.nan,
            "train_acc": float(rec.correct[seen].mean()) if seen.any() else math.nan,
        }
        return rec


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def weight_norms(model: nn.Module) -> dict:
    """L2 (Frobenius) norms of three parameter groups.

    * ``weight``: conv and linear weights (tensors of 2+ dims outside normalisation layers); the
      stop signal, because its rise and fall follows learning;
    * ``norm``: normalisation-layer scales and shifts, which weight decay shrinks from their
      initial 1 from the first epoch on and which would hide the peak in a total;
    * ``total``: every parameter, biases included.

    A whitened stem (``whitening.apply_stem``) is left out of all three: it is fixed, and its large constant
    norm would flatten the curve's relative rise that the peak detector reads.
    """
    norm_params, fixed = set(), set()
    for m in model.modules():
        if isinstance(m, NORM_LAYERS):
            norm_params.update(id(p) for p in m.parameters(recurse=False))
        if getattr(m, "memscan_fixed", False):
            fixed.update(id(p) for p in m.parameters(recurse=False))
    sq = {"weight": 0.0, "norm": 0.0, "bias": 0.0}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) in fixed:
                continue
            v = float(p.detach().float().pow(2).sum())
            if id(p) in norm_params:
                sq["norm"] += v
            elif p.ndim >= 2:
                sq["weight"] += v
            else:
                sq["bias"] += v
    return {"weight_norm": math.sqrt(sq["weight"]), "norm_layer_norm": math.sqrt(sq["norm"]),
            "total_norm": math.sqrt(sum(sq.values()))}
