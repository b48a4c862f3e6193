"""When to stop training: the weight-norm peak, the suspects converging, and the rule over both.

``PeakDetector`` finds a confirmed peak of a per-epoch curve; ``RankStabilityDetector`` tells when
the set of suspects (negative running AUM) stops changing; ``StopRule`` combines them as
``--stop-signal`` says. Each is fed once per epoch and has ``state_dict()``/``load_state_dict()``
of plain lists, numbers and tensors, so a checkpoint holds no live object and loads with
``weights_only=True``.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import RunConfig


class PeakDetector:
    """Finds the peak of a noisy per-epoch curve, causally, without a validation set.

    The curve is smoothed with a trailing moving average of ``smoothing`` epochs. A peak is
    confirmed once the smoothed curve has stayed below its running maximum for ``patience``
    consecutive epochs, and only if the curve first rose by ``min_rise`` (relative) above its start:
    a curve that falls from epoch 0 (e.g. a norm dominated by decaying BatchNorm scales) has no peak.
    The peak epoch reported is the raw maximum inside the smoothing window of the smoothed maximum.
    """

    def __init__(self, *, smoothing: int = 3, patience: int = 3, min_rise: float = 0.01,
                 min_epochs: int = 3):
        self.smoothing, self.patience, self.min_rise, self.min_epochs = smoothing, patience, min_rise, min_epochs
        self.values: list[float] = []
        self.smoothed: list[float] = []
        self.peak_epoch: int | None = None

    def update(self, value: float) -> bool:
        """Add the next epoch's value; True once the peak is confirmed (then stays True)."""
        self.values.append(float(value))
        w = self.values[-self.smoothing:]
        self.smoothed.append(sum(w) / len(w))
        if self.peak_epoch is None:
            self.peak_epoch = self._find()
        return self.peak_epoch is not None

    def _find(self) -> int | None:
        s = self.smoothed
        t = len(s) - 1
        if t + 1 < max(self.min_epochs, self.smoothing + self.patience):
            return None
        best = int(np.argmax(s))
        if t - best < self.patience:
            return None
        start = s[min(self.smoothing - 1, best)]
        if s[best] <= start * (1 + self.min_rise) or best < self.smoothing - 1:
            return None  # never rose: not a rise-and-fall peak
        lo = max(0, best - self.smoothing + 1)
        return lo + int(np.argmax(self.values[lo:best + 1]))

    @property
    def confirmed(self) -> bool:
        return self.peak_epoch is not None

    def state_dict(self) -> dict:
        return {"values": list(self.values), "smoothed": list(self.smoothed), "peak_epoch": self.peak_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.values, self.smoothed = list(state["values"]), list(state["smoothed"])
        self.peak_epoch = state["peak_epoch"]


class RankStabilityDetector:
    """Stops when the set of suspects stops changing between epochs.

    Fed the running AUM (mean margin so far) each epoch. The suspects are the k samples whose given
    label usually loses (AUM < 0), ranked by AUM; the stability of epoch t is how much the k
    lowest-AUM samples at t and at t-1 agree *beyond chance*: (overlap - k/n) / (1 - k/n), where k/n
    is the overlap two random sets of k samples would have (Cohen's kappa in spirit). Converged when it
    stays >= ``threshold`` for ``patience`` epochs. The raw overlap was used first: it grows with k/n,
    so one threshold stopped too early at high noise (many suspects) and too late at low noise
    (BENCHMARKS.md §0). (A Spearman correlation over all samples was tried before that: dominated by
    the order of the many clean samples, it converged far too late on MNIST.)
    """

    def __init__(self, *, threshold: float = 0.87, patience: int = 2, min_epochs: int = 3):
        self.threshold, self.patience, self.min_epochs = threshold, patience, min_epochs
        self._prev_order = None
        self.values: list[float] = []
        self.suspects: list[int] = []
        self.peak_epoch: int | None = None

    def update(self, aum: np.ndarray) -> bool:
        aum = np.asarray(aum, dtype=np.float64)
        order = np.argsort(aum, kind="stable")
        n, k = len(aum), int((aum < 0).sum())
        if self._prev_order is None or k == n:
            v = 0.0   # first epoch, or every sample a suspect: nothing has settled
        elif k == 0:
            v = 1.0   # nothing looks mislabeled: nothing left to settle
        else:
            overlap = len(np.intersect1d(order[:k], self._prev_order[:k], assume_unique=True)) / k
            v = (overlap - k / n) / (1 - k / n)
        self._prev_order = order
        self.values.append(v)
        self.suspects.append(k)
        t = len(self.values) - 1
        if self.peak_epoch is None and t + 1 >= self.min_epochs and len(self.values) > self.patience and all(
                x >= self.threshold for x in self.values[-self.patience:]):
            self.peak_epoch = t
        return self.peak_epoch is not None

    def state_dict(self) -> dict:
        prev = None if self._prev_order is None else torch.from_numpy(np.ascontiguousarray(self._prev_order))
        return {"prev_order": prev, "values": list(self.values), "suspects": list(self.suspects),
                "peak_epoch": self.peak_epoch}

    def load_state_dict(self, state: dict) -> None:
        prev = state["prev_order"]
        self._prev_order = None if prev is None else prev.numpy()
        self.values, self.suspects = list(state["values"]), [int(k) for k in state["suspects"]]
        self.peak_epoch = state["peak_epoch"]


CURVE_KEYS = {"weight-norm": "weight_norm", "total-norm": "total_norm", "grad-mean": "grad_mean"}


class StopRule:
    """The stop decision, fed once per epoch.

    * a confirmed peak of the chosen curve (``weight-norm``: conv/linear weights; ``auto`` uses it too):
      memorization of the hard and mislabeled samples starts there, CSG and SGAL are summed up to it;
    * ``rank-stability`` (and ``auto`` when no peak came first): the suspects (samples with negative
      AUM, lowest first) agree beyond chance by >= ``rank_threshold`` between consecutive epochs for 2 epochs in a
      row, i.e. more epochs no longer change which samples look mislabeled.
    """

    def __init__(self, cfg: RunConfig):
        key = "weight-norm" if cfg.stop_signal == "auto" else cfg.stop_signal
        self.curve = CURVE_KEYS.get(key)
        self.peak = PeakDetector(smoothing=cfg.smoothing, patience=cfg.patience,
                                 min_epochs=cfg.min_epochs) if self.curve else None
        self.rank = None
        if cfg.stop_signal in ("auto", "rank-stability"):
            self.rank = RankStabilityDetector(threshold=cfg.resolved().rank_threshold, patience=2,
                                              min_epochs=cfg.min_epochs)
        self._cum_margin = None
        self._epochs = 0
        self.reason = None

    def update(self, rec, summary) -> bool:
        if self.rank is not None:
            m = np.nan_to_num(rec.margin.astype(np.float64))
            self._cum_margin = m if self._cum_margin is None else self._cum_margin + m
            self._epochs += 1
            self.rank.update(self._cum_margin / self._epochs)
            summary["rank_stability"] = self.rank.values[-1]
            summary["suspects"] = self.rank.suspects[-1]
        if self.peak is not None:
            self.peak.update(summary[self.curve])
        epoch = len(self.peak.values if self.peak else self.rank.values)
        if self.reason is None and self.peak_epoch is not None:
            self.reason = (f"{self.curve.replace('_', ' ')} peaked at epoch {self.peak_epoch + 1}, confirmed at "
                           f"epoch {epoch}")
        elif self.reason is None and self.rank is not None and self.rank.peak_epoch is not None:
            self.reason = (f"suspects converged at epoch {epoch} (the {self.rank.suspects[-1]} lowest-AUM samples "
                           f"agree {self.rank.values[-1]:.1%} beyond chance with the epoch before)" + (f"; no {self.curve.replace('_', ' ')} peak yet" if self.curve else ""))
        return self.reason is not None

    @property
    def peak_epoch(self):
        return self.peak.peak_epoch if self.peak is not None else None

    def state_dict(self) -> dict:
        cum = None if self._cum_margin is None else torch.from_numpy(np.ascontiguousarray(self._cum_margin))
        return {"peak": None if self.peak is None else self.peak.state_dict(),
                "rank": None if self.rank is None else self.rank.state_dict(),
                "cum_margin": cum, "epochs": self._epochs, "reason": self.reason}

    def load_state_dict(self, state: dict) -> None:
        for det, key in ((self.peak, "peak"), (self.rank, "rank")):
            if (det is None) != (state[key] is None):
                raise ValueError(f"stop-rule state does not match --stop-signal ({key})")
            if det is not None:
                det.load_state_dict(state[key])
        self._cum_margin = None if state["cum_margin"] is None else state["cum_margin"].numpy()
        self._epochs, self.reason = int(state["epochs"]), state["reason"]
