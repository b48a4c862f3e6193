"""A frozen body's training copy, its BatchNorm folded into the convolutions (``--freeze``).

With the body frozen, every BatchNorm layer in it is a fixed per-channel affine map (eval mode,
running statistics), so it folds into the conv before it: the same function to float rounding, one
memory pass less per layer in the forward pass and in the input gradient's backward pass (resnet18 at
224 px: 11-13% of a frozen step, BENCHMARKS.md §18). The copy shares the model's classifier head
modules, so the optimizer, the checkpoints and the prediction pass see one set of parameters: only the
training steps run through the copy. Models that torch.fx cannot trace, or whose copy does not give the
model's logits, train on the model itself.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .models import classifier_names


def fold_frozen_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module | None:
    """The training copy of a frozen ``model`` (``models.freeze_body``), checked on the batch ``x`` to give
    the model's logits; None when nothing folds, tracing fails, or the check does not hold."""
    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception:   # data-dependent control flow and other untraceable forwards: train on the model
        return None
    modules = dict(traced.named_modules())
    folded = 0
    for node in list(traced.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not (isinstance(bn, nn.BatchNorm2d) and getattr(bn, "memscan_frozen", False) and bn.track_running_stats
                and bn.running_mean is not None):
            continue
        into = prev = _single_use_module(node.args[0] if node.args else None)
        if isinstance(modules.get(getattr(prev, "target", None)), nn.MaxPool2d) and _positive_scale(bn):
            # conv -> max-pool -> BatchNorm (memscan's CNNs): a positive per-channel scale commutes with the max
            prev = _single_use_module(prev.args[0])
        conv = modules.get(getattr(prev, "target", None))
        if type(conv) is not nn.Conv2d or any(p.requires_grad for p in conv.parameters()):
            continue
        fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
        # a deep copy of the conv: it is no longer a stem whose next layer is known (``stem_grad``)
        fused.__dict__.pop("memscan_fixed", None)
        _set_module(traced, prev.target, fused)
        modules[prev.target] = fused
        node.replace_all_uses_with(into)
        traced.graph.erase_node(node)
        folded += 1
    if not folded:
        return None
    for name in classifier_names(model):   # the model's own head: one set of parameters trains and is saved
        _set_module(traced, name, model.get_submodule(name))
    traced.graph.eliminate_dead_code()
    traced.delete_all_unused_submodules()
    traced.recompile()
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    if {id(p) for p in traced.parameters() if p.requires_grad} != trained or not _same_logits(model, traced, x):
        return None
    return traced


def _single_use_module(node):
    """``node`` when it is a module call whose output nothing else reads (else the unnormalised value is
    needed elsewhere and the BatchNorm cannot fold into it), else None."""
    ok = isinstance(node, torch.fx.Node) and node.op == "call_module" and len(node.users) == 1
    return node if ok else None


def _positive_scale(bn: nn.BatchNorm2d) -> bool:
    scale = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    return bool((scale.detach() > 0).all())


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _same_logits(model: nn.Module, copy_: nn.Module, x: torch.Tensor) -> bool:
    """Both in the training step's modes (frozen BatchNorm in eval), fp32: equal to float rounding."""
    with torch.no_grad():
        x = x[:8].float()
        a, b = model(x).float(), copy_(x).float()
    return bool(torch.isfinite(b).all()) and bool(((a - b).abs().max() <= 1e-3 * (1 + a.abs().max())).item())
