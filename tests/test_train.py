import numpy as np
import pytest
import torch

from memscan.config import RunConfig
from memscan.errors import ConfigError, TrainingError
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


def test_predict_probs_flip_averages_the_mirror_image():
    from memscan.data.loader import InMemorySource
    from memscan.models import MemscanCNN
    from memscan.train import predict_probs
    torch.manual_seed(0)
    model = MemscanCNN(3, width=4)
    torch.nn.init.normal_(model.head.weight, std=20.0)   # a confident head: the two views' softmax differ
    images = np.random.default_rng(1).integers(0, 256, (9, 3, 16, 16), dtype=np.uint8)
    src = InMemorySource(images, np.arange(9) % 3, mean=[0.5] * 3, std=[0.25] * 3)
    mirrored = InMemorySource(np.ascontiguousarray(images[..., ::-1]), np.arange(9) % 3, mean=[0.5] * 3, std=[0.25] * 3)
    plain = predict_probs(model, src, batch_size=4, dtype=torch.float32)
    both = predict_probs(model, src, batch_size=4, dtype=torch.float32, flip=True)
    np.testing.assert_allclose(both, (plain + predict_probs(model, mirrored, batch_size=4, dtype=torch.float32)) / 2,
                               rtol=1e-5, atol=1e-7)
    assert np.abs(both - plain).max() > 1e-3   # a random net is not mirror-symmetric: the views differ
    np.testing.assert_allclose(both.sum(1), 1, rtol=1e-5)
    assert RunConfig(augment="crop-flip").flips and not RunConfig(augment="crop").flips


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


def _prior_and_source(tmp_path, classes_before=5):
    from memscan.data.loader import InMemorySource
    from memscan.models import MemscanCNN
    torch.manual_seed(3)
    path = tmp_path / "prior.pt"
    torch.save(MemscanCNN(classes_before).state_dict(), path)
    rng = np.random.default_rng(0)
    labels = np.arange(48) % 3
    images = (rng.integers(0, 60, (48, 3, 8, 8)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    return str(path), InMemorySource(images, labels, mean=[0.5] * 3, std=[0.25] * 3)


def test_finetune_plan_defaults_and_overrides(tmp_path):
    from memscan.models import MemscanCNN, create_model
    from memscan.train import FINETUNE_BODY_LR, FINETUNE_HEAD_EPOCHS, finetune_plan
    path, _ = _prior_and_source(tmp_path)
    scratch = MemscanCNN(3)
    assert finetune_plan(scratch, RunConfig()) == (0.0, 1.0)
    new_head = create_model("memscan-cnn", 3, weights=path)
    assert finetune_plan(new_head, RunConfig(weights=path)) == (FINETUNE_HEAD_EPOCHS, FINETUNE_BODY_LR)
    same_head = create_model("memscan-cnn", 5, weights=path)   # same classes: the prior's head is kept
    assert finetune_plan(same_head, RunConfig(weights=path)) == (0.0, FINETUNE_BODY_LR)
    assert finetune_plan(new_head, RunConfig(weights=path, head_epochs=2, body_lr=0.5)) == (2.0, 0.5)
    # weights of as many classes, but other ones: --new-head drops the file's head
    forced = create_model("memscan-cnn", 5, weights=path, new_head=True)
    assert not torch.equal(forced.head.weight, same_head.head.weight)
    assert torch.equal(forced.features[0].weight, same_head.features[0].weight)
    assert finetune_plan(forced, RunConfig(weights=path, new_head=True)) == (FINETUNE_HEAD_EPOCHS, FINETUNE_BODY_LR)
    with pytest.raises(ConfigError, match="body_lr"):
        RunConfig(body_lr=-1)


@pytest.mark.parametrize("body_lr", [None, 1.0])   # the head-only phase also with the body at the full rate
def test_finetune_trains_the_new_head_alone_first_then_everything(tmp_path, body_lr):
    from memscan.models import create_model
    from memscan.signals import Recorder
    from memscan.train import fit
    path, src = _prior_and_source(tmp_path)
    model = create_model("memscan-cnn", 3, weights=path)
    start = {k: v.clone() for k, v in model.named_parameters()}
    snapshots = []
    cfg = RunConfig(weights=path, max_epochs=2, stop="none", batch_size=16, augment="none", anneal_epochs=0,
                    body_lr=body_lr, head_epochs=1.0)
    fit(model, src, cfg, recorder=Recorder(len(src)),
        on_epoch=lambda s: snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()}))
    after_head_phase, after_all = snapshots
    for name, v in start.items():
        if name.startswith("head."):
            assert not torch.equal(after_head_phase[name], v), name
        else:   # rate 0 during the head-only epoch: not even weight decay moves the body
            assert torch.equal(after_head_phase[name], v), name
            assert not torch.equal(after_all[name], v), name


def test_freeze_trains_the_head_only_and_records_the_full_input_gradient(tmp_path):
    import copy

    import torch.nn.functional as F

    from memscan.models import create_model, freeze_body, train_mode
    from memscan.stem_grad import StemGrad
    from memscan.train import make_optimizer, train_step
    path, src = _prior_and_source(tmp_path)
    model = create_model("memscan-cnn", 3, weights=path)
    reference = copy.deepcopy(model)
    freeze_body(model)
    train_mode(model)
    reference.train()
    for m_ref, m in zip(reference.modules(), model.modules()):
        m_ref.training = m.training   # the same BatchNorm modes: frozen body layers use running statistics
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and not any(m.training for m in bn) and model.head.training
    stats = [m.running_mean.clone() for m in bn]
    x, y = src.batch(torch.arange(16))
    # the whole network's input gradient by plain autograd, nothing frozen (mean loss: 1/B of each sample's)
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(reference(xr), y).backward()
    expected = torch.linalg.vector_norm(xr.grad, dim=(1, 2, 3))
    opt = make_optimizer(model, RunConfig(freeze=True, weights=path, lr=1e-12, momentum=0.0))
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 2   # head weight and bias
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    _, stats_step = train_step(model, x, y, opt, scaler)
    torch.testing.assert_close(stats_step.grad_norm, expected, rtol=1e-5, atol=1e-8)
    # the stem path (checked against autograd on its first step, then alone) gives the same values
    stem = StemGrad.find(model, x)
    for _ in range(2):
        _, stats_step = train_step(model, x, y, opt, scaler, stem=stem)
        torch.testing.assert_close(stats_step.grad_norm, expected, rtol=1e-4, atol=1e-8)
    assert stem.verified
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("head."))
    assert all(torch.equal(m.running_mean, s) for m, s in zip(bn, stats))


def test_freeze_and_new_head_need_a_prior(tmp_path):
    from memscan.prepare import build_model
    with pytest.raises(ConfigError, match="--freeze.*--weights"):
        build_model(RunConfig(freeze=True), 3)
    with pytest.raises(ConfigError, match="--new-head.*--weights"):
        build_model(RunConfig(new_head=True), 3)


def test_one_parameter_group_keeps_the_parameter_order_of_earlier_checkpoints():
    from memscan.models import MemscanCNN
    from memscan.train import make_optimizer
    model = MemscanCNN(3)
    groups = make_optimizer(model, RunConfig()).param_groups
    assert len(groups) == 1 and [id(p) for p in groups[0]["params"]] == [id(p) for p in model.parameters()]


def test_body_warms_up_again_after_the_head_only_phase():
    from memscan.models import MemscanCNN
    from memscan.train import lr_factor, make_optimizer, make_schedule
    cfg = RunConfig(warmup_epochs=1.0)
    opt = make_optimizer(MemscanCNN(3), cfg, body_lr=0.1, head_epochs=1.0)
    sched = make_schedule(opt, 10, cfg, head_epochs=1.0)
    head, body = sched.lr_lambdas
    assert [body(s) for s in range(10)] == [0.0] * 10
    assert body(10) == pytest.approx(0.1 * lr_factor(10, 10, cfg)) and body(20) == pytest.approx(1.0)
    assert head(10) == lr_factor(10, 10, cfg) == 1.0
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, 0.1]


def test_two_classifier_heads_timm_style():
    import torch.nn as nn

    from memscan.models import freeze_body, is_head_parameter
    from memscan.train import make_optimizer

    class Distilled(nn.Module):   # timm's distilled DeiT / LeViT say classifier=("head", "head_dist")
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
            self.head, self.head_dist = nn.Linear(4, 2), nn.Linear(4, 2)
            self.default_cfg = {"classifier": ("head", "head_dist")}

    m = Distilled()
    assert is_head_parameter(m, "head_dist.weight") and not is_head_parameter(m, "body.0.weight")
    assert len(make_optimizer(m, RunConfig()).param_groups) == 1
    freeze_body(m)
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["head.weight", "head.bias", "head_dist.weight",
                                                                         "head_dist.bias"]


def test_fit_with_a_frozen_body_moves_only_the_head(tmp_path):
    from memscan.models import create_model, freeze_body
    from memscan.signals import Recorder
    from memscan.train import fit
    path, src = _prior_and_source(tmp_path)
    model = create_model("memscan-cnn", 3, weights=path)
    freeze_body(model)
    params = {k: v.clone() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    cfg = RunConfig(weights=path, freeze=True, max_epochs=2, stop="none", batch_size=16, augment="none")
    recorder = Recorder(len(src))
    fit(model, src, cfg, recorder=recorder)
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]) != k.startswith("head."), k
    for k, v in model.named_buffers():   # BatchNorm statistics of the frozen body: untouched
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, buffers[k]), k


def test_a_split_frozen_step_equals_the_whole_step_and_records_only_the_chosen_samples(tmp_path):
    """--input-grad-every: the recorded part and the forward-only part of a frozen batch give the logits,
    head update and (for the recorded samples) input gradients of one whole step; the rest are NaN."""
    import copy

    from memscan.models import create_model, freeze_body, train_mode
    from memscan.stem_grad import StemGrad
    from memscan.train import make_optimizer, train_step
    path, src = _prior_and_source(tmp_path)
    x, y = src.batch(torch.arange(16))
    record = torch.tensor([i % 3 == 0 for i in range(16)])
    for use_stem in (False, True):
        whole = create_model("memscan-cnn", 3, weights=path)
        freeze_body(whole)
        train_mode(whole)
        split = copy.deepcopy(whole)
        cfg = RunConfig(freeze=True, weights=path, lr=0.05, input_grad_every=3)
        opt_w, opt_s = make_optimizer(whole, cfg), make_optimizer(split, cfg)
        stem_w = StemGrad.find(whole, x) if use_stem else None
        stem_s = StemGrad.find(split, x) if use_stem else None
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        for _ in range(2):   # the stem path is checked against autograd on a first (split) step, then alone
            lw, sw = train_step(whole, x, y, opt_w, scaler, stem=stem_w)
            ls, ss = train_step(split, x, y, opt_s, scaler, stem=stem_s, record=record)
            torch.testing.assert_close(ss.logits, sw.logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ls, lw, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ss.grad_norm[record], sw.grad_norm[record], rtol=1e-4, atol=1e-8)
            assert torch.isnan(ss.grad_norm[~record]).all()
        if use_stem:
            assert stem_s.verified
        torch.testing.assert_close(split.head.weight, whole.head.weight, rtol=1e-5, atol=1e-6)
        assert all(p.grad is None for n, p in split.named_parameters() if not n.startswith("head."))
        if use_stem:   # the forward-only part starts no autograd at the stem: one gradient reaches it, the recorded
            calls, keep = [], stem_s._keep
            stem_s._keep = lambda g: (calls.append(g.shape[0]), keep(g))[1]
            train_step(split, x, y, opt_s, scaler, stem=stem_s, record=record)
            assert calls == [int(record.sum())]
            del stem_s._keep
    # no sample recorded: the body runs forward only, every gradient NaN
    _, none = train_step(split, x, y, opt_s, scaler, stem=stem_s, record=torch.zeros(16, dtype=torch.bool))
    assert torch.isnan(none.grad_norm).all() and torch.isfinite(none.logits).all()


def test_grad_rotation_takes_each_sample_once_in_every_k_epochs():
    from memscan.train import grad_rotation
    assert grad_rotation(100, 1, 0) is None
    rot = grad_rotation(1000, 4, 3)
    assert torch.equal(rot, grad_rotation(1000, 4, 3)) and not torch.equal(rot, grad_rotation(1000, 4, 4))
    taken = torch.stack([(rot + e) % 4 == 0 for e in range(8)])
    assert torch.equal(taken[:4].sum(0), torch.ones(1000, dtype=torch.long))
    assert torch.equal(taken[4:].sum(0), torch.ones(1000, dtype=torch.long))
    assert 0.2 < taken[0].float().mean() < 0.3   # about a quarter of every batch


def test_input_grad_every_needs_a_frozen_body_and_the_inloop_signal():
    with pytest.raises(ConfigError, match="needs --freeze"):
        RunConfig(input_grad_every=3)
    with pytest.raises(ConfigError, match="--signal inloop"):
        RunConfig(input_grad_every=3, freeze=True, weights="w.pt", signal="exact")
    with pytest.raises(ConfigError):
        RunConfig(input_grad_every=0)
    # each sample once before the earliest stop (--min-epochs 3 by default)
    with pytest.raises(ConfigError, match="--min-epochs"):
        RunConfig(input_grad_every=4, freeze=True, weights="w.pt")
    assert RunConfig(input_grad_every=4, freeze=True, weights="w.pt", min_epochs=4).input_grad_every == 4
    with pytest.raises(ConfigError, match="earliest stop"):
        RunConfig(input_grad_every=3, freeze=True, weights="w.pt", stop="none", max_epochs=2)


def test_fit_with_sampled_input_gradients_estimates_the_exact_csg(tmp_path):
    """A frozen run with --input-grad-every 2 takes each sample's input gradient in 2 of 4 epochs, in whole
    batches; it trains like a run with every gradient (the same samples, other batches) and its CSG,
    estimated from half the epochs, ranks the samples like the exact one."""
    from memscan.models import create_model, freeze_body
    from memscan.scores import accumulate
    from memscan.signals import Recorder
    from memscan.train import fit
    from scipy.stats import spearmanr
    path, src = _prior_and_source(tmp_path)
    out = {}
    for every in (1, 2):
        torch.manual_seed(0)   # the same fresh head
        model = create_model("memscan-cnn", 3, weights=path)
        freeze_body(model)
        cfg = RunConfig(weights=path, freeze=True, max_epochs=4, stop="none", batch_size=8, augment="none",
                        input_grad_every=every, lr=0.05, min_epochs=2)
        recorder, records = Recorder(len(src)), []
        fit(model, src, cfg, recorder=recorder, on_record=records.append)
        out[every] = (records, accumulate(records, len(src), peak_epoch=None))
    (rec1, sig1), (rec2, sig2) = out[1], out[2]
    for a, b in zip(rec1, rec2):
        taken = ~np.isnan(b.grad_sq)
        assert 0.3 < taken.mean() < 0.7 and not np.isnan(a.grad_sq).any()
    assert (sum(~np.isnan(r.grad_sq) for r in rec2) == 2).all()   # each sample once in every 2 of the 4 epochs
    rho = spearmanr(sig2.csg, sig1.csg)[0]
    assert rho > 0.95, rho
    assert spearmanr(sig2.sgal, sig1.sgal)[0] > 0.9
    assert abs(np.median(sig2.csg / sig1.csg) - 1) < 0.1   # on the exact one's scale


def test_recorded_samples_fill_whole_batches():
    from memscan.train import group_recorded
    order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    taken = torch.arange(103) % 3 == 0
    grouped = group_recorded(order, taken, 8)
    assert sorted(grouped.tolist()) == list(range(103))
    is_taken = set(order[taken].tolist())
    kinds = [{int(i) in is_taken for i in grouped[s:s + 8]} for s in range(0, 103, 8)]
    assert sum(len(k) == 2 for k in kinds) <= 2 and all(len(k) == 1 for k in kinds[:-2])
    firsts = [i for i, k in enumerate(kinds[:-2]) if k == {True}]
    assert firsts and max(firsts) - min(firsts) >= len(kinds) // 2   # spread over the epoch, not bunched


def test_accumulate_estimates_csg_from_the_epochs_taken():
    from memscan.scores import accumulate
    from memscan.signals import EpochRecord
    nan = np.nan
    grads = [[1.0, nan, 4.0], [nan, 2.0, nan], [3.0, nan, nan]]    # epoch means over the samples taken: 2.5, 2, 3
    recs = [EpochRecord(e, np.array(g), np.zeros(3), np.zeros(3), np.ones(3, bool)) for e, g in enumerate(grads)]
    # to the peak at epoch 1 (means 2.5 + 2 = 4.5): each sample's taken values relative to those epochs' means
    np.testing.assert_allclose(accumulate(recs, 3, peak_epoch=1).csg, [1 / 2.5 * 4.5, 2 / 2 * 4.5, 4 / 2.5 * 4.5])
    # all 3 epochs (7.5): sample 0 was taken twice
    np.testing.assert_allclose(accumulate(recs, 3, peak_epoch=None).csg, [4 / 5.5 * 7.5, 7.5, 4 / 2.5 * 7.5])
    # to the peak at epoch 0, sample 1 was not taken: its ratio over all epochs taken, times the window's mean
    np.testing.assert_allclose(accumulate(recs, 3, peak_epoch=0).csg, [1.0, 2 / 2 * 2.5, 4.0])
    # every gradient taken: the plain sum, bit for bit
    full = [EpochRecord(e, np.array([1.0, 2.0, 3.0]) * (e + 1), np.zeros(3), np.zeros(3), np.ones(3, bool))
            for e in range(3)]
    assert accumulate(full, 3, peak_epoch=None).csg.tolist() == [6.0, 12.0, 18.0]
