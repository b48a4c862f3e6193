"""Models by name: built-in CPU-friendly CNNs, or any timm model; local weights; new head.

``create_model(name, num_classes, *, weights=None, pretrained=False, in_size=None)``, in timm's
style: built-in names first, everything else goes to ``timm.create_model``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .errors import ModelError


def _conv_bn(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]


class MemscanCNN(nn.Module):
    """A 4-stage BatchNorm CNN (airbench-like conv-pool blocks) that trains fast on CPU.

    stem conv (w) -> 3 blocks [conv, maxpool/2, BN, GELU, conv, BN, GELU] of widths 2w, 4w, 8w
    -> global max pool -> linear. Any input size of 16 px or more. Trained from scratch (``--stem auto``, the
    default), the stem conv is set from the data's whitened patch directions and kept fixed (``whitening``).
    """

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        w = width
        layers = _conv_bn(3, w)
        cin = w
        for cout in (2 * w, 4 * w, 8 * w):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                       nn.BatchNorm2d(cout), nn.GELU(), *_conv_bn(cout, cout)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(cin, num_classes)
        self.default_cfg = {"classifier": "head"}

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


BUILTIN = {
    # width 16: 0.29 M parameters, ~390 train img/s at 32 px on 2 CPU cores (BENCHMARKS.md)
    "memscan-cnn": lambda k: MemscanCNN(k, width=16),
    "memscan-cnn-m": lambda k: MemscanCNN(k, width=32),
    "memscan-cnn-l": lambda k: MemscanCNN(k, width=64),
}


def list_models() -> list[str]:
    return sorted(BUILTIN)


def is_conv_net(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def load_state_dict_file(path) -> dict:
    """A safetensors file or a torch state dict, loaded without executing pickled code."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"weights file '{p}' does not exist; pass a .safetensors or .pt/.pth state dict")
    if not p.is_file():   # a folder, a pipe or a device: a read would fail or block
        kind = "a folder" if p.is_dir() else "not a regular file"
        raise ModelError(f"weights file '{p}' is {kind}; pass a .safetensors or .pt/.pth state dict file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(p))
        else:
            sd = load_weights_only(p)
    except Exception as e:
        raise ModelError(f"cannot load weights '{p}' ({type(e).__name__}); it must be a safetensors file or "
                         "a torch state dict saved with torch.save(model.state_dict(), ...)") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"weights file '{p}' does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _load_into(model: nn.Module, sd: dict, path, new_head: bool = False) -> None:
    """Load matching weights; the classifier head is left fresh when its shape differs (fine-tuning) or when
    ``new_head`` (weights of as many, but other, classes)."""
    if new_head:
        sd = {k: v for k, v in sd.items() if not is_head_parameter(model, k)}
    own = model.state_dict()
    keep = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    dropped = [k for k in sd if k not in keep]
    missing = [k for k in own if k not in keep]
    bad = [k for k in missing + dropped if not is_head_parameter(model, k)]
    if bad:
        raise ModelError(f"weights '{path}' do not fit this model (first mismatched tensor: '{bad[0]}'); "
                         "pass --model with the architecture the weights were saved from")
    model.load_state_dict(keep, strict=False)
    model.memscan_new_head = any(is_head_parameter(model, k) for k in missing)


def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """Module names of the classifier head(s): "head" in memscan's CNNs; timm models say it in their cfg, a
    tuple for those with two heads (distilled DeiT, LeViT: ``("head", "head_dist")``)."""
    names = (getattr(model, "default_cfg", None) or {}).get("classifier", "head")
    return (names,) if isinstance(names, str) else tuple(names)


def is_head_parameter(model: nn.Module, name: str) -> bool:
    return name.startswith(tuple(c + "." for c in classifier_names(model)))


def freeze_body(model: nn.Module) -> int:
    """Every parameter outside the classifier head stops learning (``--freeze``); returns how many tensors.
    The input gradient still flows through the whole network: autograd computes the activations'
    gradients down to the input but no weight gradient for a frozen layer."""
    frozen = 0
    for name, p in model.named_parameters():
        if not is_head_parameter(model, name):
            p.requires_grad_(False)
            frozen += 1
    if frozen == sum(1 for _ in model.parameters()):
        raise ModelError(f"--freeze found no classifier head named {' or '.join(classifier_names(model))} to train")
    for name, m in model.named_modules():   # with or without affine parameters, their statistics stay too
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not is_head_parameter(model, name + "."):
            m.memscan_frozen = True
    return frozen


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except the BatchNorm layers of a frozen body (``freeze_body``): they keep their running
    statistics (a frozen body's features must not drift with the batches of a new dataset)."""
    model.train()
    for m in model.modules():
        if getattr(m, "memscan_frozen", False):
            m.eval()


def create_model(name: str, num_classes: int, *, weights: str | None = None, pretrained: bool = False,
                 in_chans: int = 3, new_head: bool = False) -> nn.Module:
    if num_classes < 2:
        raise ModelError(f"num_classes={num_classes}; a classifier needs at least two classes")
    if name in BUILTIN:
        if pretrained:
            raise ModelError(f"model '{name}' has no hub weights; use --weights FILE or a timm model name")
        model = BUILTIN[name](num_classes)
        if weights:
            _load_into(model, load_state_dict_file(weights), weights, new_head)
        return model
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency
        raise ModelError("timm is not installed; pip install timm") from None
    if not timm.list_models(name) and name not in timm.list_models():
        raise ModelError(f"unknown model '{name}'; use one of {', '.join(list_models())} or a timm model "
                         "name (python -c 'import timm; print(timm.list_models())')")
    if weights:
        # loaded by memscan alone (weights_only / safetensors): timm's own file loader may unpickle
        sd = load_state_dict_file(weights)
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
        _load_into(model, sd, weights, new_head)
        return model
    try:
        if pretrained and not _hub_reachable():
            with _hub_offline():  # cached weights still load; otherwise fail now, not after retries
                return timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans)
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
    except Exception as e:
        if pretrained:
            raise ModelError(f"cannot fetch hub weights for '{name}' ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:120] if str(e) else ''}); without network, download "
                             "them elsewhere and pass --weights FILE") from None
        raise ModelError(f"cannot build timm model '{name}': {e}") from None


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    import os
    import socket
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class _hub_offline:
    """Put huggingface_hub in offline mode for one call (it reads the flag at call time)."""

    def __enter__(self):
        try:
            from huggingface_hub import constants
            self._c, self._old = constants, constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = True
        except Exception:
            self._c = None

    def __exit__(self, *exc):
        if self._c is not None:
            self._c.HF_HUB_OFFLINE = self._old


def load_weights_only(path):
    """``torch.load(weights_only=True)`` without the warnings torch prints beside its refusal of a
    pickle: the one-line error says what happened."""
    import warnings

    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)
