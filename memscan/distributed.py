"""Data-parallel runs under ``torchrun`` (NCCL on CUDA, gloo on CPU), and the single-process case.

``setup()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins the
process group; with no such environment it returns a one-process context, so the same pipeline
and training loop serve both. Rank 0 decodes the cache, prints, and writes every file; the others
wait at barriers. A collective that fails (another process died) becomes a ``TrainingError``
rather than a hang: gloo and NCCL fail on a closed peer, and every collective has a timeout
(``MEMSCAN_DIST_TIMEOUT`` seconds, default 600).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from .errors import TrainingError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.active:
            _guard(torch.distributed.barrier)

    def decide(self, flag: bool) -> bool:
        """Rank 0's decision, for everyone (the stop decision is made once and broadcast)."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int64)
        if self.backend == "nccl":
            t = t.cuda()
        _guard(torch.distributed.broadcast, t, src=0)
        return bool(t.item())

    def teardown(self):
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _guard(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:   # gloo/NCCL: peer closed, timeout
        raise TrainingError(f"lost contact with another memscan process ({str(e).splitlines()[0][:200]}); "
                            "one rank probably died: see its log above, then resume with 'memscan resume RUN'") from None


def setup(device_type: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("MEMSCAN_DIST_TIMEOUT", "600")))
        torch.distributed.init_process_group(backend, timeout=timeout)
    return Dist(rank, world, local, backend)


def device_for(dist: Dist, device: torch.device) -> torch.device:
    """Each process on its own GPU (``LOCAL_RANK``); CPU processes share the CPU."""
    if device.type == "cuda" and dist.active:
        return torch.device("cuda", dist.local_rank)
    return device


def wrap(model, dist: Dist, device: torch.device):
    if not dist.active:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
