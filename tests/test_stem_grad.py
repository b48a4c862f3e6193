import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from memscan.config import RunConfig
from memscan.data.loader import InMemorySource
from memscan.models import MemscanCNN
from memscan.signals import Recorder
from memscan.stem_grad import StemGrad
from memscan.train import fit, train_step


def autograd_and_stem_norms(model, x, dtype=torch.float32, stem=None):
    stem = stem or StemGrad.find(model, x)
    assert stem is not None
    xx = x.detach().to(dtype).requires_grad_(True)
    stem.attach()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = F.cross_entropy(model(xx).float(), torch.arange(len(x)) % 4, reduction="sum")
    loss.backward()
    got = stem.norm()
    stem.detach()
    return torch.linalg.vector_norm(xx.grad, dim=(1, 2, 3), dtype=torch.float32), got


def strided(k, s, p, cout=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, cout, k, s, p), nn.BatchNorm2d(cout), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(cout, 4))


@pytest.mark.parametrize("k,s,p,h,w", [(7, 2, 3, 32, 32), (7, 2, 3, 33, 31), (3, 2, 1, 29, 32), (4, 4, 0, 32, 32),
                                       (5, 3, 2, 30, 31), (3, 2, 0, 32, 32), ((3, 5), (2, 3), (1, 2), 20, 27),
                                       (3, 1, 1, 32, 32), (3, 1, 1, 31, 29), (5, 1, 2, 16, 16), (1, 1, 0, 9, 8),
                                       (3, 1, 0, 16, 16), ((3, 3), (1, 2), (1, 1), 17, 20)])
def test_phase_conv_norm_equals_autograd_input_gradient(k, s, p, h, w):
    # including image sizes that are not multiples of the stride and non-square kernels/strides
    torch.manual_seed(1)
    ref, got = autograd_and_stem_norms(strided(k, s, p).train(), torch.randn(5, 3, h, w))
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5)


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("convnext_atto", 32), ("efficientnet_b0", 32)])
def test_timm_stems_in_bf16(name, size):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4).to(memory_format=torch.channels_last).train()
    x = torch.randn(4, 3, size, size).contiguous(memory_format=torch.channels_last)
    ref, got = autograd_and_stem_norms(model, x, torch.bfloat16)
    # two bf16 computations of one norm (accumulated in fp32) differ by rounding of the bf16 inputs:
    # a fraction of bf16's resolution (2^-7), more where oneDNN emulates bf16 (AVX2: 7.5e-4 seen),
    # far below what a second path from x to the loss would add
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=torch.finfo(torch.bfloat16).eps / 4)


def test_find_takes_the_conv_that_receives_the_input_itself():
    x = torch.randn(2, 3, 16, 16)
    model = MemscanCNN(4, width=4)
    assert StemGrad.find(model, x).conv is model.features[0]
    ref, got = autograd_and_stem_norms(model.train(), torch.randn(5, 3, 16, 16))
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5)

    class Scaled(nn.Module):   # x is changed before the conv sees it
        def __init__(self):
            super().__init__()
            self.net = strided(3, 2, 1)

        def forward(self, x):
            return self.net(x * 2)
    assert StemGrad.find(Scaled(), x) is None
    assert StemGrad.find(strided(3, 2, 1), x).conv.stride == (2, 2)


class TwoPaths(nn.Module):
    """x reaches the loss through the stem conv and directly: the stem path would miss a part."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.head = nn.Linear(8 + 3, 4)

    def forward(self, x):
        return self.head(torch.cat([self.stem(x).mean((2, 3)), x.mean((2, 3))], 1))


def test_train_step_verifies_the_stem_against_autograd():
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 4, (6,))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for model, ok in ((strided(7, 2, 3), True), (TwoPaths(), False)):
        stem = StemGrad.find(model, x)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        _, plain = train_step(model, x, y, opt, scaler)
        _, first = train_step(model, x, y, opt, scaler, stem=stem)   # the checking step
        assert stem.verified is ok and stem.rejected is not ok
        np.testing.assert_allclose(first.grad_norm.numpy(), plain.grad_norm.numpy(), rtol=1e-5)
        if ok:
            _, later = train_step(model, x, y, opt, scaler, stem=stem)   # stem path only
            np.testing.assert_allclose(later.grad_norm.numpy(), plain.grad_norm.numpy(), rtol=1e-5)
        stem.detach()


def csg_both_ways(make_model, imgs, labels):
    """Two epochs of ``fit`` with the stem path and with autograd alone: {True/False: grad_sq [epochs, N]}."""
    cfg = RunConfig(batch_size=16, stop="none", max_epochs=2, augment="none", precision="fp32")
    got = {}
    for use in (True, False):
        torch.manual_seed(0)
        model = make_model()
        src = InMemorySource(imgs, labels, mean=[0.5] * 3, std=[0.25] * 3)
        records = []
        fit(model, src, cfg, recorder=Recorder(len(labels)), on_record=records.append, stem_grad=use)
        got[use] = np.stack([r.grad_sq for r in records])
        assert not any(h for m in model.modules() for h in m._forward_hooks.values())   # nothing left attached
    return got


def test_fit_records_the_same_csg_through_the_stem():
    rng = np.random.default_rng(0)
    got = csg_both_ways(lambda: strided(5, 2, 2), rng.integers(0, 256, (48, 3, 16, 16), dtype=np.uint8),
                        rng.integers(0, 4, 48))
    np.testing.assert_allclose(got[True], got[False], rtol=1e-4)


def test_an_overflowed_step_leaves_the_check_for_the_next():
    # fp16: a step whose scaled gradients overflowed neither verifies nor rejects the stem path
    model = strided(3, 2, 1)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 4, (4,))
    stem = StemGrad.find(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu")      # skips the step of non-finite gradients, as under fp16
    _, sig = train_step(model, x * float("inf"), y, opt, scaler, stem=stem)
    assert torch.isnan(sig.per_sample()["grad_sq"]).all()
    assert not stem.verified and not stem.rejected
    train_step(model, x, y, opt, scaler, stem=stem)
    assert stem.verified
    stem.detach()


@pytest.mark.parametrize("fixed", [False, True])
def test_the_phase_weight_follows_the_stem_weight(fixed):
    # a fixed stem's rearranged weight is kept between steps; a change to the weight itself must rebuild it
    model = strided(5, 2, 2)
    model[0].weight.requires_grad_(not fixed)
    x = torch.randn(4, 3, 16, 16)
    stem = StemGrad.find(model, x)      # one object across the steps, as in training
    for _ in range(3):
        want, got = autograd_and_stem_norms(model, x, stem=stem)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5)
        with torch.no_grad():
            model[0].weight.mul_(-1.7).add_(0.1)


def test_a_fixed_stem_records_the_same_csg_as_autograd():
    # a whitened stem's output starts autograd itself (no copy of it): per-sample input gradients as autograd's
    from memscan import whitening
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (48, 3, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 4, 48)

    def whitened():
        m = MemscanCNN(4, width=8)
        whitening.apply_stem(m, whitening.stem_weight(imgs, [127.5] * 3, [64.0] * 3, m.features[0]))
        return m

    got = csg_both_ways(whitened, imgs, labels)
    assert np.all(got[False] > 0)
    np.testing.assert_allclose(got[True], got[False], rtol=1e-4)
    # the path those steps took: found at the fixed conv, verified against autograd, then used alone, with the
    # stem's output passed on as the autograd leaf itself (no copy)
    model = whitened()
    x = torch.as_tensor(imgs[:8], dtype=torch.float32) / 64 - 2
    stem = StemGrad.find(model, x)
    assert stem is not None and stem.conv is model.features[0]
    seen = []
    model.features[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].is_leaf and a[0].requires_grad))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    _, plain = train_step(model, x, torch.as_tensor(labels[:8]), opt, scaler)
    for checked in (False, True):   # the first step checks the path against autograd (x itself needs grad)
        seen.clear()
        _, sig = train_step(model, x, torch.as_tensor(labels[:8]), opt, scaler, stem=stem)
        assert stem.verified and seen == [checked]
        np.testing.assert_allclose(sig.grad_norm.numpy(), plain.grad_norm.numpy(), rtol=1e-5)
    stem.detach()
