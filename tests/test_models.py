import os

import pytest
import torch

from memscan.errors import ModelError
from memscan.models import MemscanCNN, create_model


def test_builtin_sizes():
    m = create_model("memscan-cnn", 10)
    assert sum(p.numel() for p in m.parameters()) == 292_954
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert create_model("memscan-cnn", 3)(torch.randn(2, 3, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_local_weights_builtin_replace_head(tmp_path, fmt):
    torch.manual_seed(1)
    src = MemscanCNN(10)
    path = tmp_path / f"w.{fmt}"
    if fmt == "pt":
        torch.save(src.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file(src.state_dict(), str(path))
    m = create_model("memscan-cnn", 4, weights=str(path))
    for k, v in src.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(m.state_dict()[k], v), k
    assert m.head.out_features == 4


def test_local_weights_timm_model(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    src = timm.create_model("test_resnet", num_classes=7)
    path = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file
    save_file(src.state_dict(), str(path))
    m = create_model("test_resnet", 3, weights=str(path))
    fc = m.pretrained_cfg.get("classifier", "fc")
    same = [k for k, v in src.state_dict().items() if not k.startswith(fc) and torch.equal(m.state_dict()[k], v)]
    assert len(same) == len([k for k in src.state_dict() if not k.startswith(fc)])
    assert m.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_bad_weights(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        create_model("memscan-cnn", 3, weights=str(tmp_path / "nope.pt"))
    with pytest.raises(ModelError, match="is a folder"):
        create_model("memscan-cnn", 3, weights=str(tmp_path))
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(ModelError, match="not a regular file"):
        create_model("memscan-cnn", 3, weights=str(tmp_path / "pipe.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot load weights"):
        create_model("memscan-cnn", 3, weights=str(junk))
    other = tmp_path / "other.pt"
    torch.save(MemscanCNN(10, width=8).state_dict(), other)
    with pytest.raises(ModelError, match="do not fit"):
        create_model("memscan-cnn", 3, weights=str(other))


def test_unknown_model_lists_choices():
    with pytest.raises(ModelError, match="memscan-cnn"):
        create_model("no-such-model-xyz", 3)


def test_pretrained_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="--weights FILE"):
        create_model("resnet18", 3, pretrained=True)
