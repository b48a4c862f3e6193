"""The whitened stem: its weight decorrelates the data's patches, is the same on every run, stays fixed in
training, and reaches exactly the models it is meant for."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from memscan import whitening
from memscan.config import RunConfig
from memscan.crossfit import reference_config
from memscan.errors import ConfigError
from memscan.data import load_index
from memscan.models import MemscanCNN
from memscan.prepare import prepare
from memscan.run_folder import RunFolder
from memscan.signals import Recorder
from memscan.train import fit

from helpers import digits_folder

CFG = RunConfig(max_epochs=2, batch_size=16, image_size=8, augment="crop", min_epochs=1, stop="none",
                precision="fp32", stem="whiten")


def correlated_images(n=400, size=12, seed=0):
    """uint8 [n, 3, size, size] with strongly correlated channels and smooth, correlated pixels."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1, size + 2, size + 2))
    smooth = (base[..., :-2, :-2] + base[..., 1:-1, 1:-1] + base[..., 2:, 2:]) / 3
    colour = smooth * np.array([1.0, 0.8, 0.6]).reshape(1, 3, 1, 1) + 0.2 * rng.normal(size=(n, 3, size, size))
    return np.clip(128 + 50 * colour, 0, 255).astype(np.uint8)


def normalised(images):
    x = images.astype(np.float64) / 255
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    return list(mean), list(std)


def test_the_weight_whitens_the_strongest_patch_directions():
    images = correlated_images()
    mean, std = normalised(images)
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    w = whitening.stem_weight(images, mean, std, conv)
    assert w.shape == (16, 3, 3, 3) and torch.isfinite(w).all()
    assert torch.equal(w[8:], -w[:8])                                   # +/- pairs
    x = (torch.from_numpy(images).double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1)
    out = nn.functional.conv2d(x, w[:8].double())                       # valid positions: the patches themselves
    flat = out.transpose(0, 1).reshape(8, -1)
    cov = torch.cov(flat, correction=0)
    var = torch.diagonal(cov)
    # each direction's variance v comes out as v / (v + EPS): about 1 for the strong ones, less for the weak ones
    val = np.linalg.eigvalsh(whitening.patch_covariance(images, mean, std, 3))[::-1][:8]
    assert np.allclose(var.numpy(), val / (val + whitening.EPS), rtol=1e-5)  # float32 weight
    assert var[0] > 0.99 and bool((var[:-1] >= var[1:] - 1e-9).all())
    off = cov - torch.diag(var)
    assert float(off.abs().max()) < 1e-6                                # decorrelated


def test_the_weight_is_deterministic_and_its_signs_canonical():
    images = correlated_images()
    mean, std = normalised(images)
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    a = whitening.stem_weight(images, mean, std, conv)
    b = whitening.stem_weight(images.copy(), mean, std, conv)
    assert torch.equal(a, b)
    rows = a[:8].flatten(1)
    assert bool((rows.gather(1, rows.abs().argmax(1, keepdim=True)) > 0).all())


def test_grey_images_and_odd_filter_counts_give_finite_weights():
    grey = np.repeat(correlated_images()[:, :1], 3, axis=1)             # R = G = B: a rank-deficient covariance
    mean, std = normalised(grey)
    conv = nn.Conv2d(3, 7, 3, bias=False)
    w = whitening.stem_weight(grey, mean, std, conv)
    assert w.shape == (7, 3, 3, 3) and torch.isfinite(w).all()
    assert torch.equal(w[3:6], -w[:3]) and torch.equal(w[6], conv.weight.detach()[6])   # the odd one keeps its init
    with pytest.raises(ValueError, match="cannot whiten"):
        whitening.stem_weight(grey, mean, std, nn.Conv2d(3, 6, 3, groups=3, bias=False))


@pytest.mark.parametrize("name", ["memscan-cnn", "memscan-cnn-m", "memscan-cnn-l"])
def test_every_builtin_width_gets_a_stem(name):
    """memscan-cnn-l's 64 stem filters outnumber the 27 values of a 3x3 RGB patch: 27 pairs, the rest as
    initialised."""
    from memscan.models import BUILTIN
    images = correlated_images()
    mean, std = normalised(images)
    model = BUILTIN[name](3)
    conv = model.features[0]
    init = conv.weight.detach().clone()
    w = whitening.stem_weight(images, mean, std, conv)
    pairs = min(conv.out_channels // 2, 27)
    assert w.shape == init.shape and torch.isfinite(w).all()
    assert torch.equal(w[pairs:2 * pairs], -w[:pairs]) and torch.equal(w[2 * pairs:], init[2 * pairs:])
    whitening.apply_stem(model, w)
    model(torch.randn(2, 3, 16, 16)).sum().backward()


def test_large_images_are_sampled_by_pixels_and_unfolded_in_small_chunks(monkeypatch):
    images = correlated_images(n=40, size=16)
    mean, std = normalised(images)
    idx = np.sort(np.random.default_rng(0).choice(40, size=10, replace=False))
    whole = whitening.patch_covariance(images[idx], mean, std, 3)        # the 10 images in one chunk
    monkeypatch.setattr(whitening, "SAMPLE_PIXELS", 10 * 16 * 16)       # room for 10 of the 40 images
    monkeypatch.setattr(whitening, "CHUNK_PIXELS", 3 * 16 * 16)         # unfolded 3 at a time
    assert np.allclose(whitening.patch_covariance(images, mean, std, 3), whole, rtol=1e-12, atol=1e-14)


def test_large_sets_are_sampled_with_the_seed(monkeypatch):
    monkeypatch.setattr(whitening, "SAMPLE_IMAGES", 100)
    images = correlated_images(n=300)
    mean, std = normalised(images)
    a = whitening.patch_covariance(images, mean, std, 3, seed=0)
    assert np.array_equal(a, whitening.patch_covariance(images, mean, std, 3, seed=0))
    assert not np.array_equal(a, whitening.patch_covariance(images, mean, std, 3, seed=1))


def test_the_stem_stays_fixed_in_training_and_the_input_gradient_flows():
    images = correlated_images(n=64, size=16)
    mean, std = normalised(images)
    model = MemscanCNN(3)
    w = whitening.stem_weight(images, mean, std, model.features[0])
    whitening.apply_stem(model, w)
    assert not model.features[0].weight.requires_grad
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert model.features[0].weight.grad is None and torch.equal(model.features[0].weight, w)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits_folder(tmp_path_factory.mktemp("whiten") / "digits", per_class=12, classes=3)


def test_prepare_whitens_memscan_cnn_from_scratch_and_every_fresh_model(data):
    prep = prepare(load_index(data), CFG)
    stem = prep.model.features[0].weight
    assert prep.stem_weight is not None and torch.equal(stem, prep.stem_weight) and not stem.requires_grad
    torch.manual_seed(1)
    fresh = prep.fresh_model()
    assert torch.equal(fresh.features[0].weight, prep.stem_weight) and not fresh.features[0].weight.requires_grad
    assert not torch.equal(fresh.features[3].weight, prep.model.features[3].weight)   # the rest starts anew
    fit(prep.model, prep.source, CFG, recorder=Recorder(len(prep.source)))
    assert torch.equal(prep.model.features[0].weight, prep.stem_weight)
    assert fresh.features[0].weight.data_ptr() != prep.model.features[0].weight.data_ptr()


def test_learned_stems_priors_and_timm_models_are_left_alone(data, tmp_path):
    prep = prepare(load_index(data), CFG.replace(stem="learned"))
    assert prep.stem_weight is None and prep.model.features[0].weight.requires_grad
    weights = tmp_path / "prior.pt"
    torch.save(MemscanCNN(3).state_dict(), weights)
    prior = prepare(load_index(data), CFG.replace(weights=str(weights)))
    assert prior.stem_weight is None and prior.model.features[0].weight.requires_grad
    assert torch.equal(prior.model.features[0].weight, torch.load(weights)["features.0.weight"])


def test_the_instance_noise_reference_keeps_a_learned_stem():
    assert reference_config(RunConfig()).stem == "learned"


def test_memscan_cnns_from_scratch_default_to_the_whitened_stem_and_its_threshold(tmp_path):
    assert (RunConfig().stem, RunConfig().rank_threshold) == ("auto", None)
    concrete = lambda **kw: (lambda c: (c.stem, c.rank_threshold))(RunConfig(**kw).resolved())
    assert concrete() == concrete(model="memscan-cnn-l") == concrete(stem="whiten") == ("whiten", 0.9)
    assert concrete(stem="learned") == concrete(weights=str(tmp_path / "w.pt")) == ("learned", 0.87)
    assert concrete(model="resnet18") == concrete(model="resnet18", stem="whiten") == ("learned", 0.87)
    assert concrete(rank_threshold=0.95) == ("whiten", 0.95) and concrete(stem="learned", rank_threshold=0.8)[1] == 0.8
    assert RunConfig().resolved().resolved() == RunConfig().resolved()
    with pytest.raises(ConfigError, match="rank_threshold"):
        RunConfig(rank_threshold=1.0)


def test_a_run_records_the_stem_and_threshold_it_used(data, tmp_path):
    from memscan.pipeline import run
    from memscan.report import read_metadata
    res = run(data, RunConfig(max_epochs=3, batch_size=16, image_size=8, augment="crop", min_epochs=1,
                              precision="fp32"), out=tmp_path / "run")
    cfg = read_metadata(res.report_path).config
    assert (cfg["stem"], cfg["rank_threshold"]) == ("whiten", 0.9)
    assert RunFolder(res.out_dir).load_args()["config"]["stem"] == "whiten"


def test_resuming_a_run_from_before_the_option_with_a_whitened_stem_names_the_option():
    from types import SimpleNamespace
    from memscan.pipeline import checked_checkpoint
    saved = RunConfig().to_dict()
    del saved["stem"]
    folder = SimpleNamespace(load_checkpoint=lambda: {"config": saved, "epoch": 1, "fingerprint": "f"})
    assert checked_checkpoint(folder, RunConfig(stem="learned"), "f")["epoch"] == 1
    with pytest.raises(ConfigError, match=r"options differ .* in stem \(was: stem='learned'\)"):
        checked_checkpoint(folder, RunConfig(stem="whiten"), "f")


def test_a_stem_the_model_never_took_is_read_as_the_learned_one():
    from types import SimpleNamespace
    from memscan.config import saved_config
    from memscan.pipeline import checked_checkpoint
    # an earlier version saved the stem as typed: --stem whiten on a timm model or a prior trained a learned one
    for typed in ({"model": "resnet18"}, {"weights": "w.pt"}, {"pretrained": True, "model": "resnet18"}):
        saved = {**RunConfig(**typed).to_dict(), "stem": "whiten", "rank_threshold": 0.87}
        assert saved_config(saved)["stem"] == "learned"
        folder = SimpleNamespace(load_checkpoint=lambda: {"config": saved, "epoch": 1, "fingerprint": "f"})
        assert checked_checkpoint(folder, RunConfig(**typed).resolved(), "f")["epoch"] == 1
    assert saved_config({**RunConfig().to_dict(), "stem": "whiten"})["stem"] == "whiten"
    assert saved_config({"stem": "auto", "model": "memscan-cnn-m"})["stem"] == "whiten"


def test_a_run_started_before_the_option_resumes_with_a_learned_stem(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    cfg = RunConfig().to_dict()
    del cfg["stem"]
    args = {"dataset": "d", "config": cfg, "cache_dir": None, "val_dataset": None, "path_column": None,
            "label_column": None, "relabelled": False}
    folder.run_args.write_text(json.dumps(args))
    assert folder.load_args()["config"]["stem"] == "learned"
    with pytest.raises(ConfigError, match="stem"):
        RunConfig(stem="pca")


def test_the_fixed_stem_stays_out_of_the_weight_norm():
    from memscan.signals import weight_norms
    images = correlated_images(n=64, size=16)
    mean, std = normalised(images)
    model = MemscanCNN(3)
    with torch.no_grad():
        model.features[0].weight.zero_()
    before = weight_norms(model)
    whitening.apply_stem(model, whitening.stem_weight(images, mean, std, model.features[0]))
    model = model.to(memory_format=torch.channels_last)                # the mark survives a layout change
    assert weight_norms(model) == pytest.approx(before, rel=1e-6)        # the layout changes the summation order
