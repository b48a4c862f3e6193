import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from memscan.models import MemscanCNN
from memscan.stopping import PeakDetector, RankStabilityDetector
from memscan.signals import (Recorder, StepSignals, input_grad_sq,
                             per_sample_stats, weight_norms)
from memscan.train import exact_pass, train_step
from memscan.data.loader import InMemorySource


def one_sample_grad_sq(model, x, y):
    xi = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(xi[None]), y[None])
    (g,) = torch.autograd.grad(loss, xi)
    return float((g * g).sum())


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 4))


def test_inloop_grad_equals_one_sample_backward_without_batch_coupling():
    model = tiny_mlp()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    expected = [one_sample_grad_sq(model, x[i], y[i]) for i in range(6)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    _, signals = train_step(model, x, y, opt, torch.amp.GradScaler("cpu", enabled=False))
    stats = signals.per_sample()
    np.testing.assert_allclose(stats["grad_sq"].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(stats["loss"].numpy(),
                               F.cross_entropy(model(x), y, reduction="none").detach().numpy(), rtol=1e-6)


def test_inloop_grad_is_unscaled_under_a_grad_scaler():
    # a GradScaler multiplies the loss (and so x.grad) by 2**16; the recorded norm must not see it
    model = tiny_mlp()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    expected = [one_sample_grad_sq(model, x[i], y[i]) for i in range(6)]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    _, signals = train_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.0), scaler)
    np.testing.assert_allclose(signals.per_sample()["grad_sq"].numpy(), expected, rtol=1e-5)


def test_record_step_blocks_equal_step_by_step_records():
    # buffered steps (blocks of 4, a short last batch with its own 1/B factor) store exactly what
    # recording each step's values at once stores
    torch.manual_seed(0)
    n, sizes = 23, [5, 5, 5, 5, 3]
    order = torch.randperm(n)
    steps, start = [], 0
    for b in sizes:
        sig = StepSignals(torch.randn(b, 4), torch.randint(0, 4, (b,)), torch.rand(b), float(b))
        steps.append((order[start:start + b], sig))
        start += b
    blocked, direct = Recorder(n), Recorder(n)
    blocked.BLOCK_STEPS = 4
    for r in (blocked, direct):
        r.start_epoch(0)
    for idx, sig in steps:
        blocked.record_step(idx, sig)
        direct.record(idx, **sig.per_sample())
    assert len(blocked._pending) == 1          # the fifth step waits for the epoch's end
    a, b = blocked.end_epoch(), direct.end_epoch()
    for f in ("grad_sq", "loss", "margin"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-6)
    assert a.correct.tolist() == b.correct.tolist()
    assert a.pred.dtype == np.int16 and a.pred.tolist() == b.pred.tolist()
    all_logits = torch.cat([s.logits for _, s in steps])
    assert a.pred[torch.cat([i for i, _ in steps]).numpy()].tolist() == all_logits.argmax(1).tolist()
    assert a.summary["seen"] == n
    idx, sig = steps[0]
    np.testing.assert_allclose(a.grad_sq[idx.numpy()], ((sig.grad_norm * 5) ** 2).numpy(), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_scaling_for_loss_reduction(reduction):
    model = tiny_mlp()
    x, y = torch.randn(5, 3, 8, 8, requires_grad=True), torch.randint(0, 4, (5,))
    F.cross_entropy(model(x), y, reduction=reduction).backward()
    got = input_grad_sq(x.grad, batch_size=5, reduction=reduction)
    expected = [one_sample_grad_sq(model, x[i], y[i]) for i in range(5)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    if reduction == "mean":  # raw batch gradient is 1/B of the per-sample one
        raw = (x.grad.flatten(1) ** 2).sum(1)
        np.testing.assert_allclose(raw.numpy() * 25, expected, rtol=1e-5)


def test_loss_scale_is_undone():
    g = torch.randn(4, 3, 2, 2)
    np.testing.assert_allclose(input_grad_sq(g * 1024, batch_size=4, loss_scale=1024.0).numpy(),
                               input_grad_sq(g, batch_size=4).numpy(), rtol=1e-6)


def test_exact_pass_equals_one_sample_backward_with_batchnorm():
    torch.manual_seed(0)
    model = MemscanCNN(3, width=4)
    model.train()
    model(torch.randn(32, 3, 16, 16))  # give BatchNorm non-trivial running statistics
    images = np.random.default_rng(0).integers(0, 256, (7, 3, 16, 16), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    src = InMemorySource(images, labels, mean=[0.5] * 3, std=[0.25] * 3)
    gsq, probs = exact_pass(model, src, batch_size=4, dtype=torch.float32, want_probs=True)
    model.eval()
    x, y = src.batch(torch.arange(7))
    expected = [one_sample_grad_sq(model, x[i], y[i]) for i in range(7)]
    np.testing.assert_allclose(gsq, expected, rtol=1e-4)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)


def test_train_mode_batchnorm_couples_samples_but_stays_close():
    """The in-loop value under train-mode BatchNorm is not exactly the per-sample gradient."""
    torch.manual_seed(0)
    model = MemscanCNN(3, width=4)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 3, (64,))
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(model(xr), y).backward()
    inloop = input_grad_sq(xr.grad, batch_size=64).numpy()
    exact = []
    for i in range(64):  # per-sample gradient of the same batch loss term, others held fixed
        xi = x.clone().requires_grad_(True)
        loss_i = F.cross_entropy(model(xi)[i:i + 1], y[i:i + 1])
        (g,) = torch.autograd.grad(loss_i, xi)
        exact.append(float((g[i] ** 2).sum()))
    exact = np.array(exact)
    assert not np.allclose(inloop, exact, rtol=1e-3)
    assert np.corrcoef(np.argsort(np.argsort(inloop)), np.argsort(np.argsort(exact)))[0, 1] > 0.8


def test_per_sample_stats_margin_and_correct():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    loss, margin, correct, pred = per_sample_stats(logits, y)
    np.testing.assert_allclose(margin.numpy(), [1.0, -2.0])
    assert correct.tolist() == [True, False]
    assert pred.tolist() == [0, 1]
    np.testing.assert_allclose(loss.numpy(), F.cross_entropy(logits, y, reduction="none").numpy())


def test_recorder_with_fake_values():
    r = Recorder(5)
    r.start_epoch(3)
    r.record(torch.tensor([4, 0]), grad_sq=torch.tensor([1.0, 2.0]), loss=torch.tensor([0.5, 0.25]),
             margin=torch.tensor([-1.0, 1.0]), correct=torch.tensor([False, True]))
    r.record(torch.tensor([1, 2, 3]), grad_sq=torch.ones(3), loss=torch.ones(3), margin=torch.ones(3),
             correct=torch.tensor([True, True, False]))
    rec = r.end_epoch()
    assert rec.epoch == 3
    np.testing.assert_allclose(rec.grad_sq, [2, 1, 1, 1, 1])
    assert rec.correct.tolist() == [True, True, True, False, False]
    assert rec.pred.tolist() == [-1] * 5           # not recorded: no class
    assert rec.summary["grad_mean"] == pytest.approx(6 / 5)
    assert rec.summary["train_acc"] == pytest.approx(3 / 5)
    r.start_epoch(4)
    assert np.isnan(r.end_epoch().loss).all()  # fresh epoch: nothing carried over


def test_weight_norms_separate_norm_layers():
    m = nn.Sequential(nn.Conv2d(1, 2, 1, bias=True), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        m[0].weight.fill_(1.0); m[0].bias.fill_(2.0); m[3].weight.fill_(3.0)
    w = weight_norms(m)
    assert w["weight_norm"] == pytest.approx(math.sqrt(2 * 1 + 4 * 9))
    assert w["norm_layer_norm"] == pytest.approx(math.sqrt(2))  # BN: weight 1, bias 0
    assert w["total_norm"] == pytest.approx(math.sqrt(2 + 36 + 2 + 8))


def _feed(det, curve):
    for t, v in enumerate(curve):
        if det.update(v):
            return t
    return None


def test_peak_detector_noisy_rise_and_fall():
    rng = np.random.default_rng(0)
    t = np.arange(40)
    curve = 10 + 5 * np.exp(-((t - 15) / 8.0) ** 2) + rng.normal(0, 0.1, 40)
    det = PeakDetector(smoothing=3, patience=3)
    stop = _feed(det, curve)
    assert stop is not None and 15 <= stop <= 22
    assert abs(det.peak_epoch - 15) <= 3


@pytest.mark.parametrize("curve", [np.linspace(1, 2, 30), np.linspace(2, 1, 30), np.full(30, 1.0)],
                         ids=["rising", "falling-from-start", "plateau"])
def test_peak_detector_no_peak(curve):
    assert _feed(PeakDetector(), curve) is None


def test_peak_detector_ignores_first_wiggle():
    curve = [1.0, 1.2, 1.15, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9]  # one dip early, then rising
    assert _feed(PeakDetector(smoothing=3, patience=3), curve) is None


def test_rank_stability_detector_on_suspect_set():
    d = RankStabilityDetector(threshold=0.9, patience=2, min_epochs=2)
    aum = np.linspace(-1, 1, 101)                 # 50 samples with negative AUM
    assert not d.update(aum)
    assert d.values[-1] == 0.0 and d.suspects[-1] == 50
    shuffled = aum.copy()
    shuffled[:50] = shuffled[:50][::-1]           # same suspects, different order: still the same set
    assert not d.update(shuffled)
    assert d.values[-1] == 1.0
    swapped = shuffled.copy()
    swapped[[0, 60]] = swapped[[60, 0]]           # one suspect replaced by a clean sample
    assert d.update(swapped)                      # overlap 49/50 = 0.98, twice >= 0.9 beyond chance
    chance = 50 / 101                             # two random sets of 50 among 101 overlap this much
    assert d.values[-1] == pytest.approx((0.98 - chance) / (1 - chance)) and d.peak_epoch == 2


def test_rank_stability_is_corrected_for_chance():
    """The same raw overlap means less when the suspects are most of the data."""
    def agreement(n, k, replaced):
        d = RankStabilityDetector(threshold=0.5)
        aum = np.linspace(0.01, 1, n)
        aum[:k] = -np.linspace(1, 0.01, k)        # exactly k suspects
        d.update(aum)
        nxt = aum.copy()
        nxt[:replaced], nxt[k:k + replaced] = aum[k:k + replaced], aum[:replaced]
        d.update(nxt)
        return d.values[-1]
    few, many = agreement(1000, 100, 5), agreement(1000, 800, 40)    # both: raw overlap 0.95
    assert few == pytest.approx((0.95 - 0.1) / 0.9) and many == pytest.approx((0.95 - 0.8) / 0.2)
    assert many < few
    every = RankStabilityDetector(threshold=0.5)
    every.update(-np.ones(4)); every.update(-np.ones(4))
    assert every.values[-1] == 0.0                # all samples suspect: nothing has settled


def test_rank_stability_nothing_suspect_is_stable():
    d = RankStabilityDetector(threshold=0.99, patience=2, min_epochs=1)
    d.update(np.ones(5)); d.update(np.ones(5))
    assert d.update(np.ones(5)) and d.values[-1] == 1.0


def test_low_precision_leaf_gives_the_fp32_leafs_gradient():
    # train_step makes the bf16 cast of x the grad leaf (cheaper); autocast casts an fp32 leaf to
    # the same values at the first conv, so loss, logits and input gradient are identical
    torch.manual_seed(0)
    model = MemscanCNN(3, width=4).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (8,))
    ref = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ref).float()
    F.cross_entropy(logits, y).backward()
    expected = (ref.grad.flatten(1) * 8).square().sum(1)
    model.zero_grad()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss, signals = train_step(model, x, y, opt, torch.amp.GradScaler("cpu", enabled=False), dtype=torch.bfloat16)
    assert torch.equal(signals.logits, logits.detach())
    np.testing.assert_allclose(signals.per_sample()["grad_sq"].numpy(), expected.numpy(), rtol=1e-5)


def test_overflowed_fp16_step_records_no_input_gradient():
    # a GradScaler step that overflowed (inf/nan gradients, skipped by the scaler) must not put inf into CSG
    sig = StepSignals(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.tensor([1.0, float("inf"), float("nan")]), 3.0)
    gsq = sig.per_sample()["grad_sq"].numpy()
    assert gsq[0] == pytest.approx(9.0) and np.isnan(gsq[1:]).all()
