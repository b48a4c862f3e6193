"""The whitened stem (``--stem auto``, the default, or ``whiten``): memscan's CNNs trained from scratch start
from a first layer fixed to the data's patch statistics.

airbench's recipe (Jordan 2024) sets the first convolution to the principal directions of the training
images' patches, each scaled by the inverse square root of its variance, in +/- pairs, and never trains it.
The network learns faster in its first epochs, where memscan stops. Measured (BENCHMARKS.md §22, §23): with
the stop at a suspect agreement of 0.9 (its own default, ``config.RANK_THRESHOLD``), +0.008 to +0.021 AUROC on
injected CIFAR-10 noise and fewer false flags on nearly clean data than the learned stem at 0.87. Its epochs
cost the same as the learned stem's: the input gradient needs the backward pass through the stem that a loop
without it could skip. The directions come from a few thousand images; nothing about the labels is used.

``stem_weight(images, mean, std, conv)`` computes the weight; ``apply_stem(model, weight)`` sets and freezes
it. Only memscan's own CNNs from scratch get it: a prior's or a timm model's first layer stays as it is.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

#: patches are drawn from at most this many images, and from at most SAMPLE_PIXELS pixels in all (5,000 images
#: at 32 px, about 100 at 224 px: a 27 x 27 covariance needs no more)
SAMPLE_IMAGES = 5000
SAMPLE_PIXELS = 5000 * 32 * 32
#: patches unfolded at a time (256 images at 32 px): a few hundred MB of working memory whatever the image size
CHUNK_PIXELS = 256 * 32 * 32
#: added to each direction's variance before the inverse square root: the weakest directions kept get a
#: large, effectively fixed scale instead of an unbounded one
EPS = 1e-2


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    return None


def patch_covariance(images, mean, std, kernel: int, *, seed: int = 0) -> np.ndarray:
    """[C k k, C k k] covariance of the normalised ``kernel`` x ``kernel`` patches of up to ``SAMPLE_IMAGES``
    images (uint8 [N, C, H, W], drawn with ``seed``; fewer for large images), accumulated in float64 a chunk at
    a time."""
    n, pixels = len(images), images.shape[2] * images.shape[3]
    most = min(SAMPLE_IMAGES, max(1, SAMPLE_PIXELS // pixels))
    chunk = min(256, max(1, CHUNK_PIXELS // pixels))
    idx = np.arange(n) if n <= most else np.sort(np.random.default_rng(seed).choice(n, size=most, replace=False))
    c = images.shape[1]
    m = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
    dim = c * kernel * kernel
    total, outer, count = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64), 0
    for start in range(0, len(idx), chunk):
        x = (torch.from_numpy(np.asarray(images[idx[start:start + chunk]])).float() / 255.0 - m) / s
        p = nn.functional.unfold(x, kernel).transpose(1, 2).reshape(-1, dim).double()
        total += p.sum(0)
        outer += p.T @ p
        count += len(p)
    mu = total / count
    return (outer / count - torch.outer(mu, mu)).numpy()


def stem_weight(images, mean, std, conv: nn.Conv2d, *, seed: int = 0) -> torch.Tensor:
    """The whitened weight of ``conv`` (out, in, k, k): the top ``out // 2`` principal directions of the
    patches (at most as many as a patch has values) divided by sqrt(variance + EPS), then the same negated.
    Filters beyond those pairs (an odd count; memscan-cnn-l's 64 against 27 directions) keep ``conv``'s own
    initial weights. Each direction's sign is fixed (its largest entry positive) so every LAPACK gives the
    same weight."""
    out, cin, k, k2 = conv.weight.shape
    if k != k2 or cin != images.shape[1] or conv.groups != 1:
        raise ValueError(f"cannot whiten a {tuple(conv.weight.shape)} convolution of groups={conv.groups} "
                         f"for {images.shape[1]}-channel images")
    val, vec = np.linalg.eigh(patch_covariance(images, mean, std, k, seed=seed))
    val, vec = val[::-1], vec[:, ::-1].T                      # rows, strongest first
    half = max(1, min(out // 2, len(val)))
    rows = vec[:half] * np.sign(vec[:half][np.arange(half), np.abs(vec[:half]).argmax(1)])[:, None]
    w = rows / np.sqrt(np.clip(val[:half], 0, None) + EPS)[:, None]
    w = np.concatenate([w, -w]).reshape(-1, cin, k, k)
    weight = conv.weight.detach().float().cpu().clone()
    weight[:min(len(w), out)] = torch.from_numpy(np.ascontiguousarray(w[:out])).float()
    return weight


def apply_stem(model: nn.Module, weight: torch.Tensor) -> None:
    """Copy ``weight`` into the first convolution and freeze it (the input gradient still flows through it)."""
    conv = first_conv(model)
    with torch.no_grad():
        conv.weight.copy_(weight.to(conv.weight))
    conv.weight.requires_grad_(False)
    conv.memscan_fixed = True     # ``signals.weight_norms`` leaves it out: it does not follow learning
