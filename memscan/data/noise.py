"""Label-noise injection with known ground truth (in memory; the dataset is never touched).

``inject_noise(labels, num_classes, *, rate, kind="symmetric", seed=0, matrix=None)`` returns the
noisy labels and the flip mask. Kinds:

* ``symmetric``: exactly ``round(rate * N)`` samples, chosen uniformly, move to a different class
  chosen uniformly among the others;
* ``pairflip``: exactly ``round(rate * N)`` samples move from class c to (c + 1) mod K;
* ``matrix``: each sample of class i draws its new label from row i of a K x K transition matrix
  (rows sum to 1; ``rate`` is ignored, the realised rate is reported);
* ``instance``: label noise that depends on the image, as human annotators make it (Chen et al. 2021,
  "Beyond class-conditional assumption"; Xia et al. 2020). ``probs`` [N, K] are a reference model's
  out-of-sample class probabilities on the clean labels (``memscan.crossfit``). Exactly
  ``round(rate * N)`` samples flip, drawn without replacement with probability proportional to
  their ambiguity 1 - probs[i, y_i] (weighted sampling, Efraimidis-Spirakis keys); each flipped
  sample's new label is drawn from the reference model's confusion over the other classes,
  probs[i, j != y_i] renormalised: a blurry dog becomes the class it resembles.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, check_choice

NOISE_KINDS = ("symmetric", "pairflip", "matrix", "instance")
AMBIGUITY_FLOOR = 1e-6   # every sample can flip, however confident the reference model was


@dataclass
class NoisyLabels:
    labels: np.ndarray        # the labels after injection
    flipped: np.ndarray       # bool mask: label differs from the original
    kind: str
    rate: float               # requested rate
    actual_rate: float        # fraction actually flipped


def load_matrix(path, num_classes: int) -> np.ndarray:
    import warnings
    from ..files import is_regular_file
    if not is_regular_file(path) or Path(path).stat().st_size > 64 << 20:   # a pipe or /dev/zero: never ends
        raise ConfigError(f"cannot read transition matrix '{path}' (missing, not a regular file, or over 64 MiB); give "
                          "a CSV of K rows of K numbers")
    try:
        with warnings.catch_warnings():   # numpy warns about an empty file before the error says so
            warnings.simplefilter("ignore")
            m = np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read transition matrix '{path}' ({e}); give a CSV of K rows of K "
                          "numbers") from None
    return validate_matrix(m, num_classes, str(path))


def validate_matrix(m, num_classes: int, name: str = "matrix") -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (num_classes, num_classes):
        shape = "x".join(str(d) for d in m.shape) if m.ndim else "a single number"
        raise ConfigError(f"transition matrix '{name}' is {shape} "
                          f"but the dataset has {num_classes} classes; give a {num_classes}x{num_classes} matrix")
    if (m < 0).any() or not np.allclose(m.sum(1), 1.0, atol=1e-6):
        bad = int(np.argmax(np.abs(m.sum(1) - 1))) if not (m < 0).any() else int(np.argwhere(m < 0)[0, 0])
        raise ConfigError(f"transition matrix '{name}' row {bad + 1} sums to {m[bad].sum():.4g} or has negative "
                          "entries; each row must be probabilities summing to 1")
    return m


def inject_noise(labels, num_classes: int, *, rate: float = 0.2, kind: str = "symmetric", seed: int = 0,
                 matrix=None, probs=None) -> NoisyLabels:
    labels = np.asarray(labels, dtype=np.int64)
    check_choice("noise kind", kind, NOISE_KINDS)
    n = len(labels)
    rng = np.random.default_rng(seed)
    if kind != "matrix":
        if not 0 < rate < 1:
            raise ConfigError(f"--rate {rate} must be strictly between 0 and 1")
        if num_classes < 2 or (kind == "pairflip" and num_classes < 2):
            raise ConfigError(f"{kind} noise needs at least two classes; the dataset has {num_classes}")
    new = labels.copy()
    if kind == "symmetric":
        k = int(round(rate * n))
        pick = rng.choice(n, size=k, replace=False)
        shift = rng.integers(1, num_classes, size=k)          # never 0: never the true class
        new[pick] = (labels[pick] + shift) % num_classes
    elif kind == "pairflip":
        k = int(round(rate * n))
        pick = rng.choice(n, size=k, replace=False)
        new[pick] = (labels[pick] + 1) % num_classes
    elif kind == "instance":
        new = _instance_noise(labels, num_classes, rate, rng, probs)
    else:
        if matrix is None:
            raise ConfigError("matrix noise needs a transition matrix (--kind matrix:FILE)")
        m = validate_matrix(matrix, num_classes)
        cum = np.cumsum(m, axis=1)
        u = rng.random(n)
        new = np.minimum((u[:, None] > cum[labels]).sum(1), num_classes - 1).astype(np.int64)
    counts = np.bincount(new, minlength=num_classes)
    before = np.bincount(labels, minlength=num_classes)
    if ((counts == 0) & (before > 0)).any():   # a class the noise emptied (not one already empty)
        empty = int(np.flatnonzero((counts == 0) & (before > 0))[0])
        raise ConfigError(f"noise at rate {rate} leaves class {empty} with no samples; use a lower --rate")
    flipped = new != labels
    return NoisyLabels(new, flipped, kind, float(rate), float(flipped.mean()))


def _instance_noise(labels, num_classes: int, rate: float, rng, probs) -> np.ndarray:
    if probs is None:
        raise ConfigError("instance noise needs a reference model's class probabilities (memscan.crossfit)")
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(labels), num_classes) or not np.isfinite(p).all() or (p < 0).any():
        raise ConfigError(f"instance noise: reference probabilities must be a finite, non-negative "
                          f"{len(labels)}x{num_classes} array, got {p.shape}")
    n = len(labels)
    k = int(round(rate * n))
    p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
    ambiguity = np.maximum(1.0 - p[np.arange(n), labels], AMBIGUITY_FLOOR)
    # Efraimidis-Spirakis: the k largest u^(1/w) are a weighted sample without replacement
    keys = np.log(rng.random(n)) / ambiguity
    pick = np.sort(np.argsort(-keys, kind="stable")[:k])
    other = p[pick].copy()
    other[np.arange(k), labels[pick]] = 0.0
    other += AMBIGUITY_FLOOR           # a reference model certain of the true class still names a wrong one
    other[np.arange(k), labels[pick]] = 0.0
    other /= other.sum(1, keepdims=True)
    cum = np.cumsum(other, axis=1)
    u = rng.random(k)[:, None]
    new = labels.copy()
    new[pick] = np.minimum((u > cum).sum(1), num_classes - 1)
    return new
