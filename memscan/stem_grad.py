"""The per-sample input-gradient norm from the gradient at the stem conv's output.

CSG needs ||d loss_i / d x_i||^2. Autograd gets it from the stem conv's backward-data pass, a
transposed conv with only 3 output channels, which oneDNN runs at the cost of one with 16 (the
channels fill its vector lanes) and, for strided stems, writes with a stride: resnet's 7x7/2 on 64
CIFAR images in bf16 takes 2.5 ms against 0.5 ms for its forward conv. Split by output phase — the
pixels x[S*i + a, S*j + b] for a, b < S — that transposed conv is an ordinary conv of the stem's
output gradient with 3 x S^2 output channels, at stride S / (stem stride), and the squared norm of its
output is the squared norm of the input gradient (the phases only rearrange pixels). S is the stem's
stride, or 2 for a stride-1 stem (else the phase conv would be the transposed conv itself). Same
values to float rounding, 1.6-5.3x faster, the per-step weight re-arrangement included
(BENCHMARKS.md §6, ``benchmarks/stem_grad_speed.py``).

It is valid only where x reaches the loss through that conv alone. ``StemGrad.find`` picks the conv
that receives x itself; the training loop checks the result against autograd's on its first step
and keeps autograd otherwise.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _phase_taps(k: int, s: int, p: int, f: int):
    """For one spatial dim of a conv (kernel k, stride s, padding p): the tap table [s*f, L] (kernel
    index, or -1 for none) of the phase conv, which runs at stride f over the conv's output gradient
    and yields the input-gradient pixels s*f*q + a for phase a; the offset of its first tap; L."""
    info = []
    for a in range(s * f):
        r, c = (a + p) % s, (a + p) // s
        info.append((r, c, -(-(k - r) // s)))
    dmin = min(c - m + 1 for r, c, m in info)
    length = max(c for r, c, m in info) - dmin + 1
    taps = [[s * (c - (t + dmin)) + r if 0 <= s * (c - (t + dmin)) + r < k else -1 for t in range(length)]
            for r, c, m in info]
    return torch.tensor(taps), dmin, length


def _padding(dmin: int, length: int, f: int, q: int, n_out: int):
    """Symmetric zero padding of the phase conv such that its output u = q + (P + dmin) / f reads
    the gradient at f*q + dmin + t, for all q < q_out."""
    pad = max(-dmin, 0)
    while (pad + dmin) % f:
        pad += 1
    while (n_out + 2 * pad - length) // f + 1 < q + (pad + dmin) // f:
        pad += f
    return pad


class StemGrad:
    """Computes per-sample ||dL/dx_i|| from the stem conv's output gradient (see module doc).

    Use: ``attach()`` before the forward pass, ``norm(...)`` after backward (before the optimizer
    step: the forward used the current weights), ``detach()`` to stop capturing.
    """

    def __init__(self, conv: nn.Conv2d, in_hw: tuple[int, int]):
        self.conv = conv
        self.verified = False      # agreed with autograd on a training step
        self.rejected = False      # disagreed: not for this model
        self._grad = None
        self._handle = None
        self._wp = (None, None)    # (key, rearranged weight) of a fixed stem: see _phase_weight
        (kh, kw), (cs_h, cs_w), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        # a stride-1 stem's phase conv would be its transposed conv itself: run it at stride 2 over
        # the output gradient instead (4 phases, 12 output channels: 1.6x faster for a 3x3 stem)
        self.f = (2 if cs_h == 1 else 1, 2 if cs_w == 1 else 1)
        th, dh, lh = _phase_taps(kh, cs_h, ph, self.f[0])
        tw, dw, lw = _phase_taps(kw, cs_w, pw, self.f[1])
        sh, sw = cs_h * self.f[0], cs_w * self.f[1]      # phases per dim
        self.s, self.L, self.dmin = (sh, sw), (lh, lw), (dh, dw)
        # gather index into the flattened kernel (kh*kw taps, plus one zero tap at the end)
        zero = kh * kw
        idx = torch.where((th[:, :, None, None] >= 0) & (tw[None, None] >= 0),
                          th.clamp(min=0)[:, :, None, None] * kw + tw.clamp(min=0)[None, None], zero)
        self.idx = idx.permute(0, 2, 1, 3).reshape(-1)            # (a, b, t, u)
        h, w = in_hw
        self.q = (-(-h // sh), -(-w // sw))
        ho = (h + 2 * ph - kh) // cs_h + 1
        wo = (w + 2 * pw - kw) // cs_w + 1
        self.pad = tuple(_padding(d, l, f, q, o) for d, l, f, q, o in zip(self.dmin, self.L, self.f, self.q, (ho, wo)))
        self.start = tuple((p + d) // f for p, d, f in zip(self.pad, self.dmin, self.f))
        # phases whose last row/column falls outside the image (h or w not a multiple of the stride)
        self.mask = None
        if h % sh or w % sw:
            rows = torch.tensor([[q < -(-(h - a) // sh) for q in range(self.q[0])] for a in range(sh)])
            cols = torch.tensor([[q < -(-(w - b) // sw) for q in range(self.q[1])] for b in range(sw)])
            self.mask = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(sh * sw, *self.q)

    @staticmethod
    def find(model: nn.Module, x: torch.Tensor) -> "StemGrad | None":
        """The strided plain Conv2d that receives ``x`` itself in a forward pass of ``model``, or None."""
        found = []
        probe = x[:2].detach()

        def pre(mod, args):
            if not found and args and args[0] is probe:
                found.append(mod)

        handles = [m.register_forward_pre_hook(pre) for m in model.modules() if isinstance(m, nn.Conv2d)]
        modes = [(m, m.training) for m in model.modules()]   # per module: a frozen body's BatchNorm stays in eval
        try:
            model.eval()
            with torch.no_grad():
                model(probe)
        finally:
            for m, training in modes:
                m.training = training
            for h in handles:
                h.remove()
        if not found:
            return None
        conv = found[0]
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            return None
        return StemGrad(conv, tuple(x.shape[-2:]))

    def attach(self):
        def capture(mod, args, out):
            if not out.requires_grad and not torch.is_grad_enabled():
                return None
            if not out.requires_grad:   # a fixed stem fed an input without grad: start autograd here
                leaf = out.detach().requires_grad_(True)
                leaf.register_hook(self._keep)
                if getattr(mod, "memscan_fixed", False):
                    # a whitened stem is set only on memscan's own CNNs trained from scratch (never with
                    # --freeze), where a BatchNorm reads it: the leaf itself goes on, without the copy below,
                    # which was a third to a half of what recording cost there (BENCHMARKS.md §24)
                    return leaf
                # a copy, not the leaf itself: the next layer may work in place (a ReLU right after a frozen
                # stem, once a frozen BatchNorm is folded into it, --freeze), which autograd forbids on a leaf
                return leaf.clone()
            out.register_hook(self._keep)
            return out
        self._grad = None
        if self._handle is None:
            self._handle = self.conv.register_forward_hook(capture)

    def _keep(self, g):
        self._grad = g

    def detach(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._grad = None

    def _phase_weight(self, dtype) -> torch.Tensor:
        """The phase conv's weight [c*S^2, o, lh, lw]: rebuilt every step for a learned stem, kept for a fixed one
        (no gradient), where the rebuild's dozen small ops are a share of the recording's cost. The key follows
        a fixed weight's in-place changes through the parameter (``copy_``, ``load_state_dict``) and its moves;
        not an edit through ``weight.data``, which memscan never makes."""
        weight = self.conv.weight
        key = None if weight.requires_grad else (weight._version, weight.data_ptr(), dtype, weight.device)
        if key is not None and self._wp[0] == key:
            return self._wp[1]
        w = weight.detach().to(dtype)
        o, c, kh, kw = w.shape
        sh, sw = self.s
        lh, lw = self.L
        wt = torch.cat([w.permute(1, 2, 3, 0).reshape(c, kh * kw, o), w.new_zeros(c, 1, o)], 1)
        if self.idx.device != w.device:      # once: a host-to-device copy per step would sync
            self.idx = self.idx.to(w.device)
            self.mask = None if self.mask is None else self.mask.to(w.device)
        wp = wt[:, self.idx]                                       # [c, sh*sw*lh*lw, o]
        wp = wp.reshape(c * sh * sw, lh, lw, o).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        self._wp = (key, wp)
        return wp

    def norm(self) -> torch.Tensor:
        """Per-sample ||x.grad_i||_2 (fp32) of the last backward pass, as autograd would give it."""
        g, self._grad = self._grad, None
        if g is None:
            raise RuntimeError("no gradient reached the stem conv in this step")
        c = self.conv.weight.shape[1]
        out = F.conv2d(g, self._phase_weight(g.dtype), stride=self.f, padding=self.pad)
        oh, ow = self.start
        out = out[:, :, oh:oh + self.q[0], ow:ow + self.q[1]]
        if self.mask is not None:
            out = out * self.mask.repeat(c, 1, 1).to(out.dtype)
        return torch.linalg.vector_norm(out, dim=(1, 2, 3), dtype=torch.float32)
