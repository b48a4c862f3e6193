"""Dataset health from a report: how many labels look right, which classes are confused for which, and
which class pairs overlap. Pure numpy, arrays in and out.

The estimates follow confident learning (Northcutt et al. 2021, cleanlab's ``estimate_joint``): the
confident joint counts samples by (given label i, confident class j), where the confident class is the
one the stop point's model predicts above that class's own threshold (the report's ``confident_class``;
samples with none are left out). Each row is rescaled to the number of samples labelled i, and the whole
to a joint distribution ``joint[i, j]`` = P(given label i, true label j). From it:

* ``label_health`` = trace(joint): the estimated fraction of correct labels (higher = healthier);
* ``noise_matrix[i, j]`` = P(given label i | true label j): each column sums to 1, off-diagonal mass is
  label noise (a column is NaN for a class no sample is confidently predicted as);
* ``overlapping_pairs``: class pairs by joint[i, j] + joint[j, i], the share of the dataset estimated to
  sit between the two (higher = more overlap: candidates to merge or to define better).
"""
from __future__ import annotations

import numpy as np


def confident_joint(labels: np.ndarray, confident: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] counts of samples with given label i and confident class j (j = -1: not counted)."""
    labels, confident = np.asarray(labels, np.int64), np.asarray(confident, np.int64)
    ok = confident >= 0
    c = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(c, (labels[ok], confident[ok]), 1)
    return c


def estimate_joint(labels: np.ndarray, confident: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] P(given label i, true label j), summing to 1. A class whose samples all lack a confident
    class keeps its mass on the diagonal (nothing says its labels are wrong)."""
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    c = confident_joint(labels, confident, num_classes).astype(np.float64)
    rows = c.sum(1)
    empty = rows == 0
    c[empty, :] = 0
    c[empty, np.flatnonzero(empty)] = 1.0
    rows = c.sum(1)
    calibrated = c / rows[:, None] * counts[:, None]
    return calibrated / max(calibrated.sum(), 1e-300)


def noise_matrix(joint: np.ndarray) -> np.ndarray:
    """P(given label i | true label j) from the joint: columns normalised (NaN where a column is empty)."""
    col = joint.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(col[None, :] > 0, joint / col[None, :], np.nan)


def overlapping_pairs(joint: np.ndarray, class_names, n: int, *, top: int = 10) -> list[dict]:
    """The class pairs with the most estimated mass between them, most first (pairs with none left out):
    ``classes`` [a, b], ``joint`` (share of the dataset), ``samples`` (that share of n), and its two
    directions ``given_a_true_b`` / ``given_b_true_a`` in samples."""
    k = joint.shape[0]
    out = []
    for i in range(k):
        for j in range(i + 1, k):
            share = float(joint[i, j] + joint[j, i])
            if share > 0:
                out.append({"classes": [str(class_names[i]), str(class_names[j])], "joint": share,
                            "samples": int(round(share * n)), "given_a_true_b": int(round(float(joint[i, j]) * n)),
                            "given_b_true_a": int(round(float(joint[j, i]) * n))})
    out.sort(key=lambda r: -r["joint"])
    return out[:top]


def dataset_health(labels: np.ndarray, confident: np.ndarray, class_names, *, top_pairs: int = 10) -> dict:
    """Everything above for one report: ``label_health``, ``estimated_errors`` (samples), ``joint`` and
    ``noise_matrix`` as nested lists (rows = given label), ``classes`` and ``overlapping_pairs``."""
    k, n = len(class_names), len(labels)
    joint = estimate_joint(labels, confident, k)
    health = float(np.trace(joint))
    return {"label_health": health, "estimated_errors": int(round((1 - health) * n)), "samples": n,
            "classes": [str(c) for c in class_names], "joint": joint.tolist(),
            "noise_matrix": noise_matrix(joint).tolist(),
            "overlapping_pairs": overlapping_pairs(joint, class_names, n, top=top_pairs)}


def report_health(df, class_names, *, top_pairs: int = 10) -> dict:
    """``dataset_health`` of a report DataFrame (columns ``label`` and ``confident_class``)."""
    return dataset_health(df["label"].to_numpy(), df["confident_class"].to_numpy(), class_names,
                          top_pairs=top_pairs)
