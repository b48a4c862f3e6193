"""prepare(): one set-up (decode cache, labels, model, normalisation, sources) reused by several trainings."""
import numpy as np
import pytest
import torch

from memscan.config import RunConfig
from memscan.data import load_index
from memscan.errors import ConfigError
from memscan.prepare import prepare
from memscan.signals import Recorder
from memscan.train import fit

from helpers import digits_folder, snapshot

CFG = RunConfig(max_epochs=2, batch_size=16, image_size=8, augment="crop", min_epochs=1, stop="none",
                precision="fp32")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = digits_folder(tmp_path_factory.mktemp("prep") / "digits", per_class=12, classes=3)
    (d / "c1" / "broken.png").write_bytes(b"not an image")
    return d


def test_prepared_holds_what_training_needs(data):
    prep = prepare(load_index(data), CFG)
    assert prep.images.dtype == np.uint8 and prep.images.shape == (36, 3, 8, 8)
    assert len(prep.table) == len(prep.labels) == len(prep.source) == 36
    assert [s["path"] for s in prep.skipped] == ["c1/broken.png"] and "c1/broken.png" not in prep.table.paths
    assert prep.image_size == 8 and prep.device.type == "cpu" and prep.dtype == torch.float32
    assert prep.channels_last and next(prep.model.parameters()).is_contiguous(memory_format=torch.channels_last)
    x, y = prep.source.batch(torch.arange(36))
    assert abs(float(x.mean())) < 0.2 and abs(float(x.std()) - 1) < 0.2      # normalised by the data's own stats
    assert torch.equal(y, torch.as_tensor(prep.labels))


def test_relabel_replaces_labels_in_memory_only(data):
    before = snapshot(data)
    prep = prepare(load_index(data), CFG, relabel=lambda t: (t.labels + 1) % t.num_classes)
    assert np.array_equal(prep.labels, (prep.table.labels + 1) % 3)
    assert snapshot(data) == before


def test_one_setup_many_trainings(data):
    """Several models from one Prepared (folds, reference models): subsets keep the normalisation,
    fresh models start from the seed."""
    prep = prepare(load_index(data), CFG)
    idx = np.arange(0, 36, 2)
    sub = prep.subset(idx)
    assert len(sub) == 18 and torch.equal(sub.labels, torch.as_tensor(prep.labels[idx]))
    assert torch.equal(sub.batch(torch.arange(3))[0], prep.source.batch(torch.as_tensor(idx[:3]))[0])
    torch.manual_seed(3)
    a = prep.fresh_model()
    torch.manual_seed(3)
    b = prep.fresh_model()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())) and a is not prep.model
    res = fit(a, sub, CFG, recorder=Recorder(len(sub)))
    assert res.epochs == 2


def test_validation_set_must_share_the_classes(data, tmp_path):
    other = digits_folder(tmp_path / "other", per_class=5, classes=2)
    with pytest.raises(ConfigError, match="must match"):
        prepare(load_index(data), CFG, val_dataset=other)
    val = prepare(load_index(data), CFG, val_dataset=data).val_source
    assert len(val) == 36
