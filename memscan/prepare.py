"""``prepare``: everything a training needs, built once from an indexed dataset.

decode cache -> labels -> model, device and precision -> normalisation -> image sources, as one
``Prepared``. ``memscan run``, the benchmarks and any command that trains several models on one
set-up call it once and ``train.fit`` as often as they need.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from . import distributed, whitening
from .config import RunConfig
from .data import load_images, load_index
from .data.cache import memory_budget
from .data.index import SampleTable
from .data.loader import InMemorySource, channel_stats
from .errors import ConfigError
from .models import create_model, freeze_body, is_conv_net
from .train import resolve_device, resolve_precision


@dataclass
class Prepared:
    cfg: RunConfig
    table: SampleTable               # the index less the unreadable images, in sample-id order
    images: np.ndarray               # uint8 [N, 3, S, S] (a np.memmap when over the memory budget)
    labels: np.ndarray               # int64 labels trained on (the table's, or relabelled in memory)
    model: nn.Module                 # on ``device``; what is saved and scored
    train_model: nn.Module           # the same module, compiled and/or DDP-wrapped for training
    source: InMemorySource
    device: torch.device
    dtype: torch.dtype               # autocast precision
    dist: distributed.Dist
    channels_last: bool
    mean: list
    std: list
    image_size: int
    skipped: list = field(default_factory=list)     # [{"path", "error"}] images that could not be read
    from_cache: bool = False
    mapped: bool = False             # images memory-mapped from the on-disk cache
    val_source: InMemorySource | None = None
    notes: list = field(default_factory=list)       # one-line notes for the user (e.g. a rebuilt cache)
    sizes: np.ndarray | None = None                 # int32 [N, 2]: each image's own (width, height)
    stem_weight: torch.Tensor | None = None         # the whitened first layer every fresh model starts from

    def subset(self, idx) -> InMemorySource:
        """The samples ``idx`` as a source with the same normalisation, device and layout (a fold of
        cross-validation, a reference model's training subset)."""
        idx = np.asarray(idx)
        return InMemorySource(self.images[idx], self.labels[idx], mean=self.mean, std=self.std, device=self.device,
                              channels_last=self.channels_last)

    def fresh_model(self, cfg: RunConfig | None = None) -> nn.Module:
        """A newly initialised model (seed with ``torch.manual_seed`` first) on the same device and layout."""
        cfg = cfg or self.cfg
        model = build_model(cfg, self.table.num_classes)
        if self.stem_weight is not None and cfg.whitened:
            whitening.apply_stem(model, self.stem_weight)
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def build_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    """The run's model: built, prior weights loaded, the body frozen with ``--freeze``."""
    if cfg.freeze and not (cfg.weights or cfg.pretrained):
        raise ConfigError("--freeze trains only the classifier head, so it needs a prior model: pass --weights FILE "
                          "(or --pretrained)")
    if cfg.new_head and not cfg.weights:
        raise ConfigError("--new-head replaces the classifier head of a weights file: pass --weights FILE")
    model = create_model(cfg.model, num_classes, weights=cfg.weights, pretrained=cfg.pretrained,
                         new_head=cfg.new_head)
    if cfg.freeze:
        freeze_body(model)
    return model


def model_input_size(model_name: str, model) -> int:
    """A timm model's native input size; 32 for memscan's own CNNs and models without one."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg and not model_name.startswith("memscan-"):
        return int(cfg["input_size"][-1])
    return 32


def prepare(table: SampleTable, cfg: RunConfig, *, dist: distributed.Dist | None = None, cache_dir=None,
            relabel=None, val_dataset=None, progress=None) -> Prepared:
    """Decode (rank 0 fills the cache, the others read it), build the model and the sources.
    ``relabel(table) -> labels`` replaces the labels in memory (eval-noise)."""
    emit = progress or (lambda event, **info: None)
    device = resolve_device(cfg.device)
    dist = dist or distributed.setup(device.type)
    device = distributed.device_for(dist, device)
    dtype = resolve_precision(cfg.precision, device)
    # built before decoding: the model's preferred input size decides the decode size
    model = build_model(cfg, table.num_classes)
    if not dist.is_main:
        dist.barrier()
    decoded = load_images(table, image_size=cfg.image_size, strict=cfg.strict, workers=cfg.workers,
                          cache_dir=cache_dir, default_size=model_input_size(cfg.model, model),
                          memory_bytes=memory_budget(cfg.cache_memory), max_pixels=cfg.max_image_pixels,
                          progress=lambda d, n: emit("decode", done=d, total=n))
    if dist.is_main:
        dist.barrier()
    table = decoded.table
    labels = np.asarray(relabel(table) if relabel else table.labels, dtype=np.int64)
    if len(decoded.images) < 2 or np.bincount(labels, minlength=table.num_classes).max() == len(labels):
        raise ConfigError(f"'{table.location}': fewer than two classes have readable images; memscan needs two")

    pcfg = getattr(model, "pretrained_cfg", None) or {}
    if (cfg.weights or cfg.pretrained) and "mean" in pcfg:
        mean, std = list(pcfg["mean"]), list(pcfg["std"])
    else:
        mean, std = channel_stats(decoded.images)
    stem_weight = None
    if cfg.whitened:   # the same images and seed on every rank give every rank the same weight
        stem_weight = whitening.stem_weight(decoded.images, mean, std, whitening.first_conv(model), seed=cfg.seed)
        whitening.apply_stem(model, stem_weight)
    channels_last = cfg.channels_last if cfg.channels_last is not None else (
        device.type in ("cpu", "cuda") and is_conv_net(model))
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model = distributed.wrap(torch.compile(model) if cfg.compile else model, dist, device)
    source = InMemorySource(decoded.images, labels, mean=mean, std=std, device=device, channels_last=channels_last)
    prep = Prepared(cfg=cfg, table=table, images=decoded.images, labels=labels, model=model, train_model=train_model,
                    source=source, device=device, dtype=dtype, dist=dist, channels_last=channels_last, mean=mean,
                    std=std, image_size=int(decoded.images.shape[-1]), skipped=table.unreadable + decoded.skipped,
                    from_cache=decoded.from_cache, mapped=isinstance(decoded.images, np.memmap),
                    notes=list(decoded.notes), sizes=decoded.sizes, stem_weight=stem_weight)
    if val_dataset is not None:
        prep.val_source = _validation_source(val_dataset, prep, cfg, cache_dir)
    return prep


def _validation_source(val_dataset, prep: Prepared, cfg: RunConfig, cache_dir) -> InMemorySource:
    """``val_dataset``: its location, or its index when the caller has one already (``pipeline.run``)."""
    vt = val_dataset if isinstance(val_dataset, SampleTable) else load_index(val_dataset)
    if vt.class_names != prep.table.class_names:
        raise ConfigError(f"validation set '{vt.location}' has classes {vt.class_names}, the dataset has "
                          f"{prep.table.class_names}; they must match")
    vd = load_images(vt, image_size=prep.image_size, strict=cfg.strict, workers=cfg.workers, cache_dir=cache_dir,
                     max_pixels=cfg.max_image_pixels)
    return InMemorySource(vd.images, vd.table.labels, mean=prep.mean, std=prep.std, device=prep.device,
                          channels_last=prep.channels_last)
