import numpy as np
import pytest
import torch

from memscan.config import RunConfig
from memscan.errors import TrainingError
from memscan.pipeline import run
from memscan.signals import EpochRecord
from memscan.stopping import StopRule
from memscan.train import lr_factor, resolve_precision

from helpers import digits_folder


def rec(epoch, margin):
    n = len(margin)
    return EpochRecord(epoch, np.ones(n), np.ones(n), np.asarray(margin, float), np.ones(n, bool))


def feed(rule, norms, margins):
    for t, (w, m) in enumerate(zip(norms, margins)):
        if rule.update(rec(t, m), {"weight_norm": w, "total_norm": w, "grad_mean": w}):
            return t
    return None


def test_stop_rule_weight_norm_peak():
    norms = [1, 2, 3, 4, 5, 6, 5.5, 5, 4.5, 4, 3.5, 3]
    rng = np.random.default_rng(0)
    margins = [rng.normal(size=50) for _ in norms]   # ranking never settles
    rule = StopRule(RunConfig(stop_signal="weight-norm"))
    t = feed(rule, norms, margins)
    assert t is not None and rule.peak_epoch == 5 and "peaked at epoch 6" in rule.reason


def test_stop_rule_auto_falls_back_to_converged_ranking():
    base = np.arange(50.0)
    margins = [(base - 25) * (1 + 0.01 * t) for t in range(10)]   # same 25 suspects every epoch
    rule = StopRule(RunConfig(stop_signal="auto"))
    t = feed(rule, np.linspace(1, 2, 10), margins)          # norm keeps rising: no peak
    assert rule.peak_epoch is None and t == 2 and "suspects converged" in rule.reason


def test_stop_rule_rank_only_ignores_norm():
    rule = StopRule(RunConfig(stop_signal="rank-stability"))
    rng = np.random.default_rng(1)
    assert feed(rule, [1, 5, 1, 5, 1, 5], [rng.normal(size=40) for _ in range(6)]) is None


def test_lr_schedules():
    cfg = RunConfig(warmup_epochs=1, max_epochs=10)
    assert lr_factor(0, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(10, 10, cfg) == 1.0 and lr_factor(95, 10, cfg) == 1.0
    cos = cfg.replace(schedule="cosine")
    assert lr_factor(55, 10, cos) == pytest.approx(0.5)
    assert lr_factor(100, 10, cos) == pytest.approx(0.0)
    one = cfg.replace(schedule="onecycle")
    assert lr_factor(30, 10, one) == pytest.approx(1.0) and lr_factor(100, 10, one) == 0.0


def test_precision_choice_cpu():
    assert resolve_precision("fp32", torch.device("cpu")) == torch.float32
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    from memscan.train import cpu_has_fast_bf16
    expected = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_nan_loss_stops_with_clear_message(tmp_path):
    data = digits_folder(tmp_path / "d", per_class=20, classes=3)
    cfg = RunConfig(max_epochs=3, lr=1e6, momentum=0.0, batch_size=16, image_size=8, augment="none", min_epochs=1)
    with pytest.raises(TrainingError, match="NaN/inf in epoch 1.*lower --lr"):
        run(data, cfg, out=tmp_path / "r")


def test_predict_probs_matches_exact_pass():
    from memscan.data.loader import InMemorySource
    from memscan.models import MemscanCNN
    from memscan.train import exact_pass, predict_probs
    torch.manual_seed(0)
    model = MemscanCNN(3, width=4)
    images = np.random.default_rng(0).integers(0, 256, (9, 3, 16, 16), dtype=np.uint8)
    src = InMemorySource(images, np.arange(9) % 3, mean=[0.5] * 3, std=[0.25] * 3)
    _, p_exact = exact_pass(model, src, batch_size=4, dtype=torch.float32, want_probs=True)
    np.testing.assert_allclose(predict_probs(model, src, batch_size=4, dtype=torch.float32), p_exact, rtol=1e-5)


def _tiny_fit(anneal_epochs, **kw):
    from memscan.data.loader import InMemorySource
    from memscan.models import MemscanCNN
    from memscan.signals import Recorder
    from memscan.train import fit
    torch.manual_seed(0)
    model = MemscanCNN(3, width=4)
    rng = np.random.default_rng(0)
    labels = np.arange(48) % 3
    images = (rng.integers(0, 60, (48, 3, 8, 8)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    src = InMemorySource(images, labels, mean=[0.5] * 3, std=[0.25] * 3)
    records, annealed = [], []
    cfg = RunConfig(max_epochs=3, stop="none", batch_size=16, augment="none", anneal_epochs=anneal_epochs, **kw)
    res = fit(model, src, cfg, recorder=Recorder(len(src)), on_record=records.append, on_anneal=annealed.append)
    return model, res, records, annealed


def test_anneal_trains_after_the_stop_at_a_lower_rate_outside_the_records():
    base_model, base, base_records, none = _tiny_fit(0)
    model, res, records, annealed = _tiny_fit(2, anneal_lr=0.25)
    assert base.anneal is None and none == []
    # the trajectories and curves are those of the run without annealing, epoch for epoch
    assert [r.epoch for r in records] == [0, 1, 2] and len(res.curves) == 3 and res.epochs == 3
    for a, b in zip(records, base_records):
        np.testing.assert_array_equal(a.loss, b.loss)
    # two more epochs at a quarter of the rate, reported, and they moved the weights
    assert res.anneal["epochs"] == 2 and res.anneal["lr"] == pytest.approx(0.0125 * 0.25)
    assert [a["anneal_epoch"] for a in annealed] == [0, 1] and all(a["lr"] == res.anneal["lr"] for a in annealed)
    assert 0 <= res.anneal["train_acc"] <= 1
    moved = [not torch.equal(p, q) for p, q in zip(model.parameters(), base_model.parameters())]
    assert all(moved)


def test_anneal_options_are_validated():
    from memscan.errors import ConfigError
    for bad in ({"anneal_lr": 0.0}, {"anneal_lr": 1.5}, {"anneal_epochs": -1}, {"anneal_epochs": 1.5}):
        with pytest.raises(ConfigError, match="anneal"):
            RunConfig(**bad)
    assert RunConfig(anneal_epochs=0).anneal_epochs == 0


def test_anneal_never_raises_the_rate_a_decaying_schedule_ended_at():
    _, res, _, _ = _tiny_fit(1, schedule="cosine")   # cosine to max_epochs: the rate is ~0 at the end
    assert res.anneal["lr"] < 0.0125 * 0.1 * 0.05
