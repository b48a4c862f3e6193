"""Why a sample is flagged and what its label should be, from its own training history: pure numpy.

``suggestion``: the class the stop point's model gives the highest probability (after the annealing epoch
and flip test-time augmentation: the best model of the run), with that probability; it equals the given
label when the model agrees with it ("keep"). ``prediction_agreement``: the fraction of the late window's
epochs whose training step predicted a given class (the evidence behind a suggestion: how stable the
model's verdict was, not only its last word). ``reasons``: one short deterministic sentence per flagged
sample, built only from values that are in the report or the trajectories, so a reader can check each part.
"""
from __future__ import annotations

import numpy as np

from .scores import Signals, percentile


def prediction_agreement(predictions, target: np.ndarray, *, window_start: int) -> np.ndarray:
    """Per sample, the fraction of the late-window epochs (``epoch >= window_start``) whose recorded
    prediction equals ``target`` (e.g. the suggestion); epochs where a sample was not seen do not count.
    ``predictions``: (epoch, pred array) pairs in epoch order (``trajectories.read_predictions``), pred -1
    where not seen. NaN for a sample with no late epoch recorded (runs recorded before predictions were)."""
    target = np.asarray(target)
    hits = np.zeros(len(target), np.int32)
    seen = np.zeros(len(target), np.int32)
    for epoch, pred in predictions:
        if epoch < window_start or pred is None:
            continue
        ok = pred >= 0
        seen += ok
        hits += ok & (pred == target)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen > 0, hits / np.maximum(seen, 1), np.nan).astype(np.float32)


def before_learned(predictions, labels: np.ndarray, learning_time: np.ndarray, num_classes: int) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """(class, count, epochs) per sample: the class other than the given label that the training steps predicted
    most often before the sample was learned (epochs < ``learning_time``, 0-based), how many of those epochs
    predicted it, and how many were recorded. A label error the model learned late was, until then, mostly
    predicted as its true class: on MNIST's 15 human-validated test-set errors that class was the raters' in
    13 (BENCHMARKS.md §21). Class -1 and count 0 where no such epoch predicted another class."""
    labels = np.asarray(labels)
    n = len(labels)
    votes = np.zeros((n, num_classes), np.int32)
    seen = np.zeros(n, np.int32)
    for epoch, pred in predictions:
        if pred is None:
            continue
        before = (epoch < learning_time) & (pred >= 0)
        seen += before
        idx = np.flatnonzero(before & (pred != labels))
        np.add.at(votes, (idx, pred[idx].astype(np.int64)), 1)
    cls = votes.argmax(1)
    count = votes[np.arange(n), cls]
    return np.where(count > 0, cls, -1), count, seen


def suggestion(scores: dict) -> tuple[np.ndarray, np.ndarray]:
    """(suggested class, its probability at the stop point) from ``compute_scores``' output."""
    return np.asarray(scores["pred"]), np.asarray(scores["p_pred"])


def _late_count(share: float, late_epochs: int) -> str:
    return str(int(round(share * late_epochs))) if np.isfinite(share) else "?"


def reasons(sig: Signals, scores: dict, labels: np.ndarray, class_names, *, agreement: np.ndarray,
            late_epochs: int, earlier=None) -> np.ndarray:
    """A short explanation for every sample whose category is not "ok" ("" for the others), e.g.
    "given label never predicted in training; predicted ship in 4 of 4 late epochs (p 0.93 at the stop);
    margin -3.1 over the late window; learned: never". Parts: the given label's history (never predicted,
    or the last epoch it was), the suggestion when it differs from the given label, the late-window
    margin (AUM, negative: another class wins on average), when it was learned and how often forgotten,
    what training predicted before it was learned when the stop point predicts the given label (``earlier``:
    ``before_learned``'s output; a learned label error's likely true class), and the loss to the peak (SGAL)
    or the input gradient (CSG) when in the top 5% of the dataset.
    Epochs are 1-based, as in every file memscan writes."""
    labels = np.asarray(labels)
    cat = np.asarray(scores["category"])
    sugg, p_sugg = suggestion(scores)
    epochs = sig.epochs
    sgal_pct, csg_pct = percentile(sig.sgal), percentile(sig.csg)
    out = np.full(len(labels), "", dtype=object)
    for i in np.flatnonzero(cat != "ok"):
        parts = []
        last = None if sig.last_correct is None else int(sig.last_correct[i])
        if last is not None and last < 0:
            parts.append("given label never predicted in training")
        elif last is not None and last + 1 < epochs:
            parts.append(f"given label last predicted in training at epoch {last + 1} of {epochs}")
        if sugg[i] != labels[i]:
            parts.append(f"predicted {class_names[sugg[i]]} in {_late_count(agreement[i], late_epochs)} of "
                         f"{late_epochs} late epochs (p {p_sugg[i]:.2f} at the stop)")
        else:
            parts.append(f"the stop point predicts the given label (p {p_sugg[i]:.2f})")
        parts.append(f"margin {sig.window_aum[i]:+.1f} over the late window")
        lt = int(sig.learning_time[i])
        learned = "never" if lt >= epochs else f"at epoch {lt + 1} of {epochs}"
        forgot = int(sig.forgetting[i])
        parts.append(f"learned: {learned}" + (f", after {forgot} forgetting event{'s' * (forgot != 1)}"
                                               if forgot else ""))
        if earlier is not None and sugg[i] == labels[i] and earlier[1][i] > 0:
            until = "before it was learned" if lt < epochs else "in training"
            parts.append(f"{until}, predicted {class_names[earlier[0][i]]} in {int(earlier[1][i])} of "
                         f"{int(earlier[2][i])} epochs")
        if sgal_pct[i] > 0.95:
            parts.append(f"loss to the peak in the top {max(1, round(100 * (1 - sgal_pct[i]))):d}%")
        elif csg_pct[i] > 0.95:
            parts.append(f"input gradient in the top {max(1, round(100 * (1 - csg_pct[i]))):d}%")
        out[i] = "; ".join(parts)
    return out
