"""Detection metrics against a known truth mask: arrays in, numbers out.

``detection_metrics(scores, truth)``: scores higher = more suspicious; truth True = really bad.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def precision_at_k(scores, truth, k: int) -> float:
    truth = np.asarray(truth, bool)
    k = int(k)
    if k <= 0:
        return float("nan")
    top = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return float(truth[top].mean())


def tpr_at_fpr(scores, truth, fpr: float = 0.05) -> float:
    """Largest true-positive rate with false-positive rate <= ``fpr``."""
    f, t, _ = roc_curve(np.asarray(truth, bool), np.asarray(scores, dtype=np.float64))
    ok = f <= fpr + 1e-12
    return float(t[ok].max()) if ok.any() else 0.0


def detection_metrics(scores, truth) -> dict:
    truth = np.asarray(truth, bool)
    scores = np.asarray(scores, dtype=np.float64)
    if truth.all() or not truth.any():
        raise ValueError("truth mask must contain both flipped and clean samples")
    k = int(truth.sum())
    return {
        "auroc": float(roc_auc_score(truth, scores)),
        "ap": float(average_precision_score(truth, scores)),
        "precision_at_k": precision_at_k(scores, truth, k),
        "tpr_at_5fpr": tpr_at_fpr(scores, truth, 0.05),
        "k": k,
    }


def flag_metrics(flagged, truth) -> dict:
    """Precision and recall of a boolean flag (e.g. category == mislabeled), and noise fractions."""
    flagged, truth = np.asarray(flagged, bool), np.asarray(truth, bool)
    tp = int((flagged & truth).sum())
    return {
        "precision": tp / flagged.sum() if flagged.any() else float("nan"),
        "recall": tp / truth.sum() if truth.any() else float("nan"),
        "estimated_noise_fraction": float(flagged.mean()),
        "true_noise_fraction": float(truth.mean()),
    }
