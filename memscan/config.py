"""Run options: every hyper-parameter in one place, with its unit, validated once.

``RunConfig`` is frozen; ``to_dict()`` is what goes into run.json and the Parquet metadata, so a
report always says how it was made. ``None`` means "choose for me" (resolved in ``resolve``),
following timm's None-defaulting options.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from .errors import ConfigError, check_choice

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
SIGNALS = ("inloop", "exact")
STOPS = ("peak", "none")
STOP_SIGNALS = ("auto", "weight-norm", "total-norm", "grad-mean", "rank-stability")
AUGMENTS = ("crop-flip", "crop", "none")
STEMS = ("auto", "whiten", "learned")

#: what a run did before an option existed, whatever that option's default is now: a config saved by an older
#: memscan (run-args.json, a checkpoint, a memorization model file) is read with these filled in
BEFORE_OPTION = {"stem": "learned"}

#: ``rank_threshold`` when none is given, by whether the stem is whitened: a whitened stem's suspects settle an
#: epoch sooner, at a fit where nearly clean CIFAR-10 still shows 2.3-3.0% hard images as flags; at 0.9 it stops
#: an epoch later, flags 1.6-2.0% and ranks injected noise better (BENCHMARKS.md §22). A learned stem (timm
#: models, fine-tuned priors) keeps 0.87
RANK_THRESHOLD = {True: 0.9, False: 0.87}


def saved_config(d: dict) -> dict:
    """A saved config dict as it ran: the options it predates filled in as they were (``BEFORE_OPTION``), and a
    stem the model never took (``whiten`` or ``auto`` for a prior or a timm model) read as the learned one."""
    d = {**BEFORE_OPTION, **d}
    if d.get("stem") in ("auto", "whiten"):
        try:
            keys = ("stem", "model", "weights", "pretrained")
            d["stem"] = RunConfig(**{k: d[k] for k in keys if k in d}).resolved().stem
        except (ConfigError, TypeError):
            pass    # an invalid saved value: the caller's validation names it
    return d


@dataclass(frozen=True)
class RunConfig:
    # model
    model: str = "memscan-cnn"          # built-in name or any timm model name
    weights: str | None = None          # local pretrained weights file (safetensors / state dict)
    pretrained: bool = False            # timm hub weights (needs network)
    stem: str = "auto"                  # "whiten": the first conv fixed to the data's whitened patch directions
                                        # (airbench), for memscan's CNNs from scratch: better ranking at the
                                        # stop, fewer false flags on nearly clean data (BENCHMARKS.md §22,
                                        # §23); "learned": from a random init; "auto": whiten where it
                                        # applies (``whitened``)
    # data
    image_size: int | None = None       # pixels (square); None: native size when all agree
    augment: str = "crop-flip"          # batched tensor ops on the training device
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.0125                  # peak learning rate, per batch of `batch_size`
    momentum: float = 0.9               # SGD only (nesterov)
    weight_decay: float = 5e-4          # L2 decay; the weight-norm peak exists because of it
    batch_size: int = 64                # images per step (per process under torchrun). 64 at lr 0.0125:
                                        # the recipe that ranks flipped labels best after few epochs
                                        # (BENCHMARKS.md §0, "The recipe"); 128 at lr 0.1 needed ~4 more
                                        # epochs for the same AUROC
    schedule: str = "constant"          # lr after warm-up; "constant" does not depend on max_epochs
    warmup_epochs: float = 1.0          # linear warm-up length, epochs
    max_epochs: int = 30
    label_smoothing: float = 0.0        # kept 0: smoothing distorts per-sample loss signals
    # fine-tuning from --weights / --pretrained (auto values measured: BENCHMARKS.md §14)
    new_head: bool = False              # a fresh head even when the file's fits the class count (other classes)
    freeze: bool = False                # train the classifier head only; the input gradient still flows
                                        # through the whole (frozen) network
    input_grad_every: int = 1           # --freeze only: each sample's input gradient is taken in one epoch of
                                        # every K (a fixed per-sample rotation) and CSG summed from those
                                        # epochs, scaled to the window; other steps run the frozen body
                                        # forward only. 1: every step (exact CSG)
    head_epochs: float | None = None    # epochs of head-only training before the body trains; None: auto
    body_lr: float | None = None        # learning-rate factor of every layer but the head; None: auto
    # signals and stopping
    signal: str = "inloop"              # "inloop": from the training step; "exact": extra eval pass
    stop: str = "peak"                  # "peak": stop after the confirmed peak; "none": max_epochs
    stop_signal: str = "auto"           # "auto": weight-norm peak, or the ranking converged, first
    rank_threshold: float | None = None # suspect-set agreement beyond chance between epochs = converged;
                                        # None: 0.9 with the whitened stem, whose suspects settle an epoch
                                        # sooner, else 0.87 (RunConfig.resolved)
    smoothing: int = 3                  # epochs in the trailing moving average of the stop curve
    patience: int = 3                   # epochs the smoothed curve must stay below its peak
    min_epochs: int = 3                 # never stop before this many epochs
    anneal_epochs: int = 1              # epochs after the stop at anneal_lr x lr, out of the score windows:
                                        # the stop point's probabilities come from a better-fitted model
    anneal_lr: float = 0.1              # learning-rate factor of those epochs
    # execution
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"             # autocast dtype; input gradients are always fp32
    channels_last: bool | None = None   # None: on for conv nets on CPU/CUDA
    compile: bool = False               # torch.compile (opt-in)
    workers: int | None = None          # decode threads; None: all cores
    cache_memory: float | None = None   # GiB of RAM the decoded images may take; above: memory-mapped
                                        # from the on-disk cache. None: half the machine's RAM
    strict: bool = False                # fail on the first unreadable image instead of skipping it
    max_image_pixels: int | None = None # images with more pixels (width x height) are skipped as
                                        # unreadable, read from the header before decoding; None:
                                        # memscan's default (data.decode), far below Pillow's

    @property
    def flips(self) -> bool:
        """Training mirrors the images: the prediction pass then averages both views (``train.predict_probs``)."""
        return "flip" in self.augment

    def __post_init__(self):
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("device", self.device, DEVICES)
        check_choice("signal", self.signal, SIGNALS)
        check_choice("stop", self.stop, STOPS)
        check_choice("stop_signal", self.stop_signal, STOP_SIGNALS)
        check_choice("augment", self.augment, AUGMENTS)
        check_choice("stem", self.stem, STEMS)
        if not isinstance(self.model, str) or not self.model:   # a saved config (run-args.json) may hold anything
            raise ConfigError(f"model={self.model!r} must name a model, e.g. memscan-cnn or a timm model name")
        if isinstance(self.weights, os.PathLike):   # the Python API may pass a Path; run.json records text
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if self.weights is not None and not isinstance(self.weights, str):
            raise ConfigError(f"weights={self.weights!r} must be a file path")
        for name, value in dataclasses.asdict(self).items():   # NaN/inf never reach training
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name}={value} is not a finite number")
        _positive("lr", self.lr)
        if self.lr > 1e6:
            raise ConfigError(f"lr={self.lr} is far beyond any usable learning rate; use e.g. 0.0125 (SGD) or 1e-3 "
                              "(AdamW)")
        for name, most in (("batch_size", 2 ** 20), ("max_epochs", 10 ** 5), ("smoothing", 1000), ("patience", 1000)):
            _int_in(name, getattr(self, name), 1, most)
        _int_in("min_epochs", self.min_epochs, 0, 10 ** 6)
        _int_in("anneal_epochs", self.anneal_epochs, 0, 1000)
        _int_in("input_grad_every", self.input_grad_every, 1, 1000)
        if self.input_grad_every > 1 and not self.freeze:
            raise ConfigError(f"input_grad_every={self.input_grad_every} needs --freeze: a training body runs the "
                              "backward pass anyway and the input gradient comes nearly free with it")
        earliest = self.max_epochs if self.stop == "none" else min(self.min_epochs, self.max_epochs)
        if self.input_grad_every > max(earliest, 1):
            raise ConfigError(f"input_grad_every={self.input_grad_every} exceeds the {earliest} epochs a run may "
                              "stop after: every sample's input gradient must be taken before the earliest stop; "
                              "pass --input-grad-every at most --min-epochs, or raise --min-epochs")
        if self.input_grad_every > 1 and self.signal == "exact":
            raise ConfigError("input_grad_every applies to --signal inloop; --signal exact takes every sample's "
                              "input gradient in its own pass each epoch")
        if not 0 < self.anneal_lr <= 1:
            raise ConfigError(f"anneal_lr={self.anneal_lr} must be in (0, 1], a factor of --lr (default 0.1)")
        _int_in("seed", self.seed, 0, 2 ** 63 - 1)
        if self.head_epochs is not None and not 0 <= self.head_epochs <= 1000:
            raise ConfigError(f"head_epochs={self.head_epochs} must be between 0 and 1000")
        if self.body_lr is not None and not 0 <= self.body_lr <= 10:
            raise ConfigError(f"body_lr={self.body_lr} must be between 0 and 10, a factor of --lr (e.g. 0.1)")
        if self.rank_threshold is not None and not 0 < self.rank_threshold < 1:
            raise ConfigError(f"rank_threshold={self.rank_threshold} must be in (0, 1), e.g. 0.87")
        if not 0 <= self.weight_decay <= 1:
            raise ConfigError(f"weight_decay={self.weight_decay} must be between 0 and 1 (default 5e-4)")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum={self.momentum} must be in [0, 1)")
        if not 0 <= self.warmup_epochs <= 10 ** 5:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs} must be between 0 and 100000 epochs")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.image_size is not None:
            _int_in("image_size", self.image_size, 8, 1024)
        if self.cache_memory is not None and not 0 <= self.cache_memory <= 2 ** 20:
            raise ConfigError(f"cache_memory={self.cache_memory} GiB must be between 0 (always memory-map) and "
                              "1048576")
        if self.workers is not None:
            _int_in("workers", self.workers, 1, 1024)
        if self.max_image_pixels is not None:
            _int_in("max_image_pixels", self.max_image_pixels, 64, 2 ** 31)
        if self.weights and self.pretrained:
            raise ConfigError("pass either --weights FILE or --pretrained, not both")

    @property
    def whitened(self) -> bool:
        """Fresh models get the whitened stem: memscan's own CNNs from scratch, with stem ``auto`` or ``whiten``;
        a prior's or a timm model's first layer stays as it is."""
        from .models import BUILTIN   # torch: imported only once a run is being set up
        return self.stem in ("auto", "whiten") and self.model in BUILTIN and not (self.weights or self.pretrained)

    def resolved(self) -> "RunConfig":
        """The config with ``auto`` and None made concrete where they depend on the model, as a run records it."""
        w = self.whitened
        return self.replace(stem="whiten" if w else "learned",
                            rank_threshold=RANK_THRESHOLD[w] if self.rank_threshold is None else self.rank_threshold)

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:   # a wrong type in a saved config (run-args.json): not a bug of ours
            raise ConfigError(f"invalid option value ({e})") from None


def _positive(name, value):
    if value is None or not value > 0:
        raise ConfigError(f"{name}={value} must be positive")


def _int_in(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name}={value} must be a whole number from {lo} to {hi}")
