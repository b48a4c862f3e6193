"""Reference memorization: Feldman & Zhang's subsampling estimator, and agreement with a run's scores.

Feldman (2020) defines the memorization of sample i by an algorithm A as
    mem(i) = P[A(S) predicts y_i on x_i] - P[A(S \\ {i}) predicts y_i on x_i],
the gain in the given label's probability that comes from i being in the training set. Feldman & Zhang
(2020) estimate it by training K models, each on a random fraction of the data: for every sample, the
models that trained on it ("in") against those that did not ("out"). Here the probability of the given
label (eval mode) stands in for 0/1 correctness: the same expectation, with lower variance.

Direction: ``memorization`` higher = more memorized (in [-1, 1]; near 0 for typical samples, near 1 for
samples only fitted by seeing them). ``p_out`` higher = more consistent with the rest of the data (the
C-score of Jiang et al. 2021, estimated the same way).

Arrays in and out, no I/O: ``memorization_folder`` (the command's trainer) owns the files.
"""
from __future__ import annotations

import numpy as np

from .scores import average_rank

SEED_STRIDE = 1_000_003   # seeds of successive models' subsets: far apart, reproducible


def subset_size(n: int, fraction: float) -> int:
    """round(fraction * n), checked to leave at least one sample in and one out."""
    size = int(round(fraction * n))
    if not 0 < fraction < 1 or not 1 <= size <= n - 1:
        raise ValueError(f"a {fraction:.0%} subset of {n} samples leaves no sample in or out")
    return size


def subset_masks(n: int, models: int, fraction: float, seed: int) -> np.ndarray:
    """[models, n] bool: model k trains on exactly round(fraction * n) samples, drawn with seed
    ``seed + k * SEED_STRIDE``; a model's subset does not depend on how many models there are."""
    size = subset_size(n, fraction)
    masks = np.zeros((models, n), dtype=bool)
    for k in range(models):
        rng = np.random.default_rng(seed + k * SEED_STRIDE)
        masks[k, rng.choice(n, size=size, replace=False)] = True
    return masks


def estimate(in_mask: np.ndarray, p_given: np.ndarray) -> dict:
    """Per sample, from K models' subsets (``in_mask`` [K, N] bool) and their probabilities of the given
    label (``p_given`` [K, N]): ``memorization`` = mean p(in) - mean p(out), its standard error (Welch:
    sqrt(var_in / n_in + var_out / n_out), NaN with fewer than two models on a side), ``p_in``,
    ``p_out`` and the counts ``n_in``/``n_out``. A sample no model held in (or out) gets NaN."""
    in_mask = np.asarray(in_mask, bool)
    p = np.asarray(p_given, np.float64)
    out_mask = ~in_mask
    n_in, n_out = in_mask.sum(0), out_mask.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in = np.where(in_mask, p, 0).sum(0) / n_in
        p_out = np.where(out_mask, p, 0).sum(0) / n_out
        var_in = np.where(in_mask, (p - p_in) ** 2, 0).sum(0) / (n_in - 1)
        var_out = np.where(out_mask, (p - p_out) ** 2, 0).sum(0) / (n_out - 1)
        se = np.sqrt(var_in / n_in + var_out / n_out)
    se[(n_in < 2) | (n_out < 2)] = np.nan
    return {"memorization": p_in - p_out, "memorization_se": se, "p_in": p_in, "p_out": p_out,
            "n_in": n_in.astype(np.int32), "n_out": n_out.astype(np.int32)}


def split_half(in_mask: np.ndarray, p_given: np.ndarray) -> dict:
    """How reproducible the estimate is: the correlation between the estimates of two disjoint halves of
    the models (even and odd), and the Spearman-Brown prediction for all K models, rho = 2r / (1 + r). A
    proxy equal to the true memorization would correlate with this noisy reference at sqrt(rho): that is
    the ceiling ``agreement`` divides by."""
    halves = [estimate(in_mask[h::2], p_given[h::2])["memorization"] for h in (0, 1)]
    ok = np.isfinite(halves[0]) & np.isfinite(halves[1])
    out = {}
    for name, fn in (("pearson", pearson), ("spearman", spearman)):
        r = fn(halves[0][ok], halves[1][ok])
        out[name] = r
        out[f"{name}_full"] = 2 * r / (1 + r) if r > -1 else float("nan")
    out["samples"] = int(ok.sum())
    return out


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else float("nan")


def spearman(a, b) -> float:
    return pearson(average_rank(np.asarray(a, np.float64)), average_rank(np.asarray(b, np.float64)))


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else float("nan")


#: a run's columns compared with the reference, each turned so that higher = more memorized
COMPARED = {
    "memorization_score": lambda df: df["memorization_score"],
    "csg": lambda df: df["csg"],
    "sgal": lambda df: df["sgal"],
    "csl": lambda df: df["csl"],
    "learning_time": lambda df: df["learning_time"],
    "-aum": lambda df: -df["aum"],
    "1-p_given": lambda df: 1 - df["p_given"],
    # not a memorization proxy by design, but in a short run the unfitted are both: listed so a user can see
    # which of the two columns tracks memorization better on their data
    "mislabel_score": lambda df: df["mislabel_score"],
}


def agreement(reference: np.ndarray, columns: dict, reliability: dict | None = None) -> list[dict]:
    """Pearson, Spearman and cosine similarity of each column (higher = more memorized) with the
    reference memorization; with ``reliability`` (``split_half``), Spearman as a fraction of the reference's
    reliability rho (``spearman_of_reliability``) and of the attainable ceiling sqrt(rho)
    (``spearman_of_ceiling``). Samples with a NaN anywhere are left out."""
    ref = np.asarray(reference, np.float64)
    rows = []
    for name, col in columns.items():
        x = np.asarray(col, np.float64)
        ok = np.isfinite(ref) & np.isfinite(x)
        row = {"column": name, "pearson": pearson(x[ok], ref[ok]), "spearman": spearman(x[ok], ref[ok]),
               "cosine": cosine(x[ok], ref[ok]), "samples": int(ok.sum())}
        rho = (reliability or {}).get("spearman_full")
        ok_rho = rho is not None and rho > 0
        row["spearman_of_reliability"] = row["spearman"] / rho if ok_rho else None
        row["spearman_of_ceiling"] = row["spearman"] / float(np.sqrt(rho)) if ok_rho else None
        rows.append(row)
    return rows


def flag_precision(flagged: np.ndarray, reference: np.ndarray, level: float) -> dict:
    """Precision and recall of a boolean flag (e.g. category == memorized) against reference
    memorization above ``level``."""
    ref = np.asarray(reference, np.float64)
    known = np.isfinite(ref)      # samples without an estimate count neither way
    flagged, truth = np.asarray(flagged, bool)[known], ref[known] > level
    tp = int((flagged & truth).sum())
    return {"level": level, "flagged": int(flagged.sum()), "above_level": int(truth.sum()),
            "precision": tp / flagged.sum() if flagged.any() else None,
            "recall": tp / truth.sum() if truth.any() else None}


def split_half_precision(in_mask: np.ndarray, p_given: np.ndarray, flagged: int, level: float) -> float | None:
    """What a flag of ``flagged`` samples can reach against this reference: the precision of one half of the
    models' ``flagged`` highest estimates against the other half's estimate above ``level``, averaged over
    both directions (even/odd models). A proxy's precision near this figure is at the reference's own noise
    floor; None when no sample is flagged or no half has such samples."""
    if flagged <= 0:
        return None
    halves = [estimate(in_mask[h::2], p_given[h::2])["memorization"] for h in (0, 1)]
    out = []
    for a, b in (halves, halves[::-1]):
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
        top = np.argsort(-a, kind="stable")[:min(flagged, len(a))]
        if len(top):
            out.append(float((b[top] > level).mean()))
    return float(np.mean(out)) if out else None
