import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from memscan.frozen_body import fold_frozen_batchnorm
from memscan.models import create_model, freeze_body, train_mode


def _frozen(name, classes=4):
    torch.manual_seed(0)
    model = create_model(name, classes)
    for m in model.modules():   # a trained body's statistics, not the fresh 0 / 1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    freeze_body(model)
    train_mode(model)
    return model


def _bn_count(m):
    return sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())


@pytest.mark.parametrize("name,size", [("memscan-cnn", 16), ("resnet18", 32)])
def test_folded_copy_gives_the_models_logits_and_input_gradient_and_trains_its_head(name, size):
    model = _frozen(name)
    x = torch.randn(6, 3, size, size)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    net = fold_frozen_batchnorm(model, x)
    assert net is not None and _bn_count(net) == 0 < _bn_count(model)
    head = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in net.parameters() if p.requires_grad} == {id(p) for p in head}
    grads = []
    for m in (model, net):
        xr = x.clone().requires_grad_(True)
        logits = m(xr)
        F.cross_entropy(logits, y).backward()
        grads.append((logits.detach(), xr.grad, [p.grad.clone() for p in head]))
        for p in head:
            p.grad = None
    (la, ga, ha), (lb, gb, hb) = grads
    torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-5)
    # per sample (what CSG records); single pixels may differ where a max-pool window holds a near-tie that
    # float rounding breaks the other way
    norm = lambda g: torch.linalg.vector_norm(g, dim=(1, 2, 3))
    torch.testing.assert_close(norm(gb), norm(ga), rtol=1e-3, atol=0)
    assert (gb - ga).abs().max() <= 0.05 * ga.abs().max()
    for a, b in zip(ha, hb):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    # the frozen body's weights stay untouched in the model (the copy holds the folded ones)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_nothing_to_fold_or_untraceable_trains_on_the_model():
    class NoBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.conv(x).mean((2, 3)))

    class DataDependent(NoBN):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            h = self.bn(self.conv(x))
            if h.sum() > 0:   # control flow on a tensor: torch.fx cannot trace it
                h = h * 2
            return self.head(h.mean((2, 3)))

    x = torch.randn(2, 3, 8, 8)
    for cls in (NoBN, DataDependent):
        m = cls()
        freeze_body(m)
        train_mode(m)
        assert fold_frozen_batchnorm(m, x) is None


def test_the_stem_path_on_a_folded_resnet_matches_autograd():
    """resnet's stem conv is followed by an in-place ReLU once its BatchNorm is folded in: the stem path must
    still start autograd there (training step with --freeze) and agree with autograd's input gradient."""
    from memscan.config import RunConfig
    from memscan.stem_grad import StemGrad
    from memscan.train import make_optimizer, train_step
    model = _frozen("resnet18")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    net = fold_frozen_batchnorm(model, x)
    stem = StemGrad.find(net, x)
    assert stem is not None
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(model(xr), y).backward()
    expected = torch.linalg.vector_norm(xr.grad, dim=(1, 2, 3))
    opt = make_optimizer(model, RunConfig(freeze=True, weights="w.pt", lr=1e-12, momentum=0.0))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for record in (None, torch.tensor([True, False, True, False])):
        for _ in range(2):   # checked against autograd, then the stem path alone
            _, stats = train_step(net, x, y, opt, scaler, stem=stem, record=record)
            got = stats.grad_norm if record is None else stats.grad_norm[record]
            want = expected if record is None else expected[record]
            torch.testing.assert_close(got, want, rtol=1e-3, atol=0)
    assert stem.verified


def test_a_folded_stem_is_not_taken_for_a_fixed_one():
    # the whitened stem's mark lets stem_grad pass its output on uncopied; a fused copy (which may feed an
    # in-place ReLU) must not carry it
    model = _frozen("memscan-cnn")
    model.features[0].memscan_fixed = True
    net = fold_frozen_batchnorm(model, torch.randn(4, 3, 16, 16))
    assert net is not None
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and not any(getattr(m, "memscan_fixed", False) for m in convs)
    assert model.features[0].memscan_fixed    # the model's own stem keeps it
