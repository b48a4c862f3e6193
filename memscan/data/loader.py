"""Batches for training: index slices of a seeded permutation, augmented as batched tensor ops.

``ImageSource`` is the one interface the training loop uses (``len``, ``labels``, ``batch``);
``InMemorySource`` holds the uint8 images on the training device (airbench style). A streaming or
memory-mapped source only has to provide the same three members.

Randomness is a pure function of (seed, epoch), so an epoch can be replayed exactly (resume,
several processes) without carrying RNG state around.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + stream) % (2 ** 63))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch (same on every process)."""
    return torch.randperm(n, generator=epoch_generator(seed, epoch))


def batch_bounds(n: int, batch_size: int, world: int = 1) -> list[tuple[int, int]]:
    """[start, end) of each global batch. A tail smaller than 2 samples per process is folded into
    the previous batch: BatchNorm cannot train on one sample, and every process must run the
    same number of steps."""
    step = batch_size * world
    bounds = [(s, min(n, s + step)) for s in range(0, n, step)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2 * world:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def batch_slices(order: torch.Tensor, batch_size: int, *, rank: int = 0, world: int = 1):
    """Yield this process's index batches: each global batch is split evenly across ranks."""
    for start, end in batch_bounds(len(order), batch_size, world):
        yield order[start:end][rank::world]


class InMemorySource:
    """uint8 images [N,3,S,S] and labels on one device; batches come out as normalised floats.

    A memory-mapped array (``np.memmap``, the on-disk decode cache of a dataset larger than the
    memory budget) stays on disk: each batch is gathered from it, so only the pages of the batch
    are read. Batches hold the same pixels either way, so results do not depend on the mode.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, mean, std, device="cpu",
                 channels_last: bool = False):
        self.device = torch.device(device)
        self.mapped = isinstance(images, np.memmap)
        self._host = images if self.mapped else None
        self.images = None if self.mapped else torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=self.device)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255
        self.channels_last = channels_last

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def image_size(self) -> int:
        return (self._host if self.mapped else self.images).shape[-1]

    def batch(self, idx: torch.Tensor, *, augment: str = "none", generator: torch.Generator | None = None):
        """(x float32 normalised, y) for sample ids ``idx``."""
        if self.mapped:
            # sorted reads are sequential on disk; the inverse permutation restores the batch order
            ids = idx.cpu().numpy()
            order = np.argsort(ids, kind="stable")
            rows = np.empty((len(ids),) + self._host.shape[1:], dtype=np.uint8)
            rows[order] = self._host[ids[order]]
            x = torch.from_numpy(rows).to(self.device, non_blocking=True)
            idx = idx.to(self.device)
        else:
            idx = idx.to(self.device)
            x = self.images[idx]
        if augment != "none":
            x = augment_batch(x, flip=augment == "crop-flip", generator=generator)
        x = (x.float() - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]


def augment_batch(x: torch.Tensor, *, flip: bool, generator: torch.Generator | None, pad: int | None = None):
    """Random crop with reflect padding (``pad`` = size/8 by default) and optional horizontal flip."""
    b, c, h, w = x.shape
    pad = max(1, round(h / 8)) if pad is None else pad
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    xp = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect").to(x.dtype)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]     # [b, h, 1]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]     # [b, 1, w]
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows, cols].permute(0, 3, 1, 2)        # [b, c, h, w]
    if flip:
        m = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        out = torch.where(m[:, None, None, None], out.flip(3), out)
    return out.contiguous()


def channel_stats(images: np.ndarray, max_samples: int = 10_000, seed: int = 0):
    """Per-channel mean and std in [0, 1] units from (a sample of) the uint8 images."""
    n = images.shape[0]
    sel = np.sort(np.random.default_rng(seed).choice(n, min(n, max_samples), replace=False))
    x = images[sel]
    v = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[1]):   # a 256-bin histogram per channel: exact, and no float copy of the images
        h = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
        m = (h @ v) / h.sum()
        mean.append(float(m))
        std.append(float(np.sqrt(max((h @ (v - m) ** 2) / h.sum(), 0.0))))
    return mean, np.maximum(std, 1e-3).tolist()
