"""The training options shared by ``run`` and ``eval-noise``, declared once.

``@run_options`` appends these parameters to a command's signature (typer reads
``__signature__``) and hands them to the command as one dict, ``run_opts``, which
``config_from_options`` turns into a validated ``RunConfig``.
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional

import typer

from ..config import RunConfig

_O = typer.Option
RUN_OPTIONS = [  # (name, type, default, typer option)
    ("model", str, "memscan-cnn", _O("memscan-cnn", help="Built-in (memscan-cnn, -m, -l) or any timm model name.")),
    ("weights", Optional[str], None, _O(None, help="Local pretrained weights (.safetensors or state dict); their "
                                        "head is kept when it fits your classes, else replaced. Fine-tunes with "
                                        "--body-lr 0.1.")),
    ("pretrained", bool, False, _O(False, help="timm hub weights (needs network).")),
    ("new_head", bool, False, _O(False, "--new-head", help="With --weights: a new classifier head even when the "
                                 "file's has as many classes (weights trained on other classes).")),
    ("freeze", bool, False, _O(False, "--freeze", help="With a prior model: train the classifier head only (the "
                               "input gradient still flows through the frozen body).")),
    ("input_grad_every", int, 1, _O(1, help="With --freeze: take each sample's input gradient in one epoch of "
                                    "every K (at most --min-epochs) and estimate CSG from those; the other steps "
                                    "run the frozen body forward only (resnet18, 224 px: 3.0-3.2x full "
                                    "fine-tuning at K=3, 1.8-2.0x at 1). Other scores do not change. 1: every step, exact CSG.")),
    ("head_epochs", Optional[float], None, _O(None, help="With a prior model: epochs a new head trains alone "
                                              "before the body warms up (default 0: measured, no gain with "
                                              "--body-lr 0.1).")),
    ("body_lr", Optional[float], None, _O(None, help="With a prior model: learning-rate factor of every layer but "
                                          "the head (default: 0.1; 1 from scratch).")),
    ("stem", str, "auto", _O("auto", help="memscan's CNNs from scratch: auto (= whiten) | whiten: the first layer "
                             "fixed to the data's whitened patch directions (better ranking, fewer false flags; "
                             "BENCHMARKS.md §22) | learned: trained from a random init. Priors and timm models "
                             "keep their own.")),
    ("image_size", Optional[int], None, _O(None, help="Pixels (default: native size when all agree).")),
    ("augment", str, "crop-flip", _O("crop-flip", help="crop-flip | crop | none (batched on the device). Without augmentation the model can learn "
                                          "the label errors before the stop (BENCHMARKS.md §25).")),
    ("no_augment", bool, False, _O(False, "--no-augment", help="Same as --augment none.")),
    ("optimizer", str, "sgd", _O("sgd", help="sgd (nesterov momentum) | adamw.")),
    ("lr", float, 0.0125, _O(0.0125, help="Peak learning rate (per batch of --batch-size).")),
    ("momentum", float, 0.9, _O(0.9, help="SGD momentum.")),
    ("weight_decay", float, 5e-4, _O(5e-4, help="Weight decay. The weight-norm peak that stops training exists "
                                     "because of it: with 0 the norm only grows.")),
    ("batch_size", int, 64, _O(64, help="Images per step.")),
    ("schedule", str, "constant", _O("constant", help="constant | cosine | onecycle (after warm-up).")),
    ("warmup_epochs", float, 1.0, _O(1.0, help="Linear warm-up, epochs.")),
    ("max_epochs", int, 30, _O(30, help="Upper bound on epochs.")),
    ("signal", str, "inloop", _O("inloop", help="inloop: input gradient from the training step (nearly free); "
                                 "exact: an extra eval-mode pass per epoch (exact per-sample values, slower).")),
    ("stop", str, "peak", _O("peak", help="peak: stop once the stop curve's peak is confirmed; none: train to "
                             "--max-epochs.")),
    ("stop_signal", str, "auto", _O("auto", help="auto: the conv/linear weight-norm peak, or the ranking "
                                    "converged, whichever first | weight-norm | total-norm | grad-mean | "
                                    "rank-stability.")),
    ("rank_threshold", Optional[float], None, _O(None, help="Suspects converged when the lowest-AUM samples "
                                                 "(AUM < 0) agree this much beyond chance between epochs, twice in a "
                                                 "row; higher = later stop, better ranking (default: 0.9 with the "
                                                 "whitened stem, else 0.87).")),
    ("patience", int, 3, _O(3, help="Epochs the smoothed curve must stay below its peak.")),
    ("smoothing", int, 3, _O(3, help="Moving-average window of the stop curve, epochs.")),
    ("min_epochs", int, 3, _O(3, help="Never stop before this many epochs.")),
    ("anneal_epochs", int, 1, _O(1, help="Epochs trained after the stop at --anneal-lr x --lr before the "
                                 "prediction pass (0: predict at the stop). Fits the model further so its verdict "
                                 "tells label errors from hard images; outside the score windows.")),
    ("anneal_lr", float, 0.1, _O(0.1, help="Learning-rate factor of the annealing epochs.")),
    ("seed", int, 0, _O(0, help="Seed: same data + seed on CPU gives the same report.")),
    ("device", str, "auto", _O("auto", help="auto | cpu | cuda | mps.")),
    ("precision", str, "auto", _O("auto", help="auto | fp32 | bf16 | fp16 (autocast; input gradients in fp32).")),
    ("channels_last", Optional[bool], None, _O(None, "--channels-last/--no-channels-last",
                                              help="(default: on for conv nets)")),
    ("compile", bool, False, _O(False, "--compile", help="torch.compile the model.")),
    ("workers", Optional[int], None, _O(None, help="Decode threads (default: all cores).")),
    ("cache_memory", Optional[float], None, _O(None, help="GiB of RAM the decoded images may use; a larger "
                                               "dataset is memory-mapped from the on-disk cache (default: half "
                                               "the RAM; 0: always map).")),
    ("strict", bool, False, _O(False, "--strict", help="Fail on unreadable images instead of skipping them.")),
    ("max_image_pixels", Optional[int], None, _O(None, help="Skip images with more pixels than this (width x "
                                                 "height, read from the header before decoding; default 40 M).")),
]
RUN_OPTION_NAMES = {name for name, *_ in RUN_OPTIONS}


def run_options(f):
    sig = inspect.signature(f)
    own = [p for p in sig.parameters.values() if p.name != "run_opts"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=typ)
             for name, typ, _, opt in RUN_OPTIONS]

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        opts = {k: kwargs.pop(k) for k in list(kwargs) if k in RUN_OPTION_NAMES}
        return f(*args, run_opts=opts, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                                                    if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD else p
                                                    for p in own] + extra)
    return wrapper


def config_from_options(opts: dict, **overrides) -> RunConfig:
    o = {**opts, **overrides}
    augment = "none" if o.pop("no_augment", False) else o.pop("augment")
    return RunConfig(augment=augment, **o)


def user_set(ctx: typer.Context, name: str) -> bool:
    """True when the user gave the option (not its default)."""
    src = ctx.get_parameter_source(name)
    return src is not None and src.name != "DEFAULT"
