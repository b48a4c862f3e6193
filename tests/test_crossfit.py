"""Cross-fitting: every sample is predicted by a model that never trained on it; instance noise end to end."""
import json

import numpy as np
import pandas as pd
import pytest

from memscan.cli import main
from memscan.config import RunConfig
from memscan.crossfit import cross_val_probs
from memscan.data import load_index
from memscan.errors import ConfigError
from memscan.prepare import prepare

from helpers import digits_folder

CFG = RunConfig(max_epochs=2, batch_size=16, image_size=8, augment="crop", min_epochs=1, precision="fp32")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits_folder(tmp_path_factory.mktemp("cf") / "digits", per_class=15, classes=3)


def test_each_sample_is_predicted_by_a_model_that_never_saw_it(data):
    prep = prepare(load_index(data), CFG)
    seen = []
    subset = prep.subset
    prep.subset = lambda idx: (seen.append(np.asarray(idx)), subset(idx))[1]
    probs = cross_val_probs(prep, CFG, folds=3, seed=1)
    train_sets, eval_sets = seen[0::2], seen[1::2]
    assert len(train_sets) == len(eval_sets) == 3
    for tr, ev in zip(train_sets, eval_sets):
        assert not set(tr) & set(ev) and len(tr) + len(ev) == 45
    assert sorted(np.concatenate(eval_sets).tolist()) == list(range(45))
    for ev in eval_sets:   # stratified: every class in every fold
        assert set(prep.labels[ev]) == {0, 1, 2}
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    prep.subset = subset
    np.testing.assert_array_equal(probs, cross_val_probs(prep, CFG, folds=3, seed=1))   # seeded


def test_cross_fitting_needs_enough_samples_per_class(data):
    prep = prepare(load_index(data), CFG)
    with pytest.raises(ConfigError, match="16-fold cross-fitting needs at least 16 samples in every class"):
        cross_val_probs(prep, CFG, folds=16)


def test_eval_noise_instance_kind_end_to_end(data, tmp_path, capsys):
    out = tmp_path / "e"
    fast = ["--max-epochs", "2", "--batch-size", "16", "--image-size", "8", "--augment", "crop", "--min-epochs",
            "1", "--precision", "fp32", "-q"]
    assert main(["eval-noise", str(data), "--kind", "instance", "--rate", "0.2", "--out", str(out), "--json",
                 *fast]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["kind"] == "instance" and res["actual_rate"] == [9 / 45]
    truth = pd.read_csv(out / "seed-0" / "truth.csv")
    assert truth["flipped"].sum() == 9
    ref = pd.read_parquet(out / "reference.parquet")
    assert len(ref) == 45 and all(abs(sum(p) - 1) < 1e-4 for p in ref["probs"])


def test_instance_noise_reference_ignores_the_audits_prior_and_network(data, tmp_path):
    """The noise is a property of the data: a run that fine-tunes from a prior (or freezes it), or audits with
    another network and recipe, gets the same reference model, hence the same flips, as a run from scratch."""
    import torch

    from memscan.crossfit import reference_probabilities
    from memscan.models import MemscanCNN
    torch.manual_seed(5)
    prior = tmp_path / "prior.pt"
    torch.save(MemscanCNN(3).state_dict(), prior)
    table = load_index(data)
    paths, plain = reference_probabilities(table, CFG, epochs=2)
    paths2, with_prior = reference_probabilities(table, CFG.replace(weights=str(prior), freeze=True, new_head=True), epochs=2)
    assert list(paths) == list(paths2)
    np.testing.assert_array_equal(plain, with_prior)
    _, other_net = reference_probabilities(table, CFG.replace(model="memscan-cnn-m", lr=0.05, batch_size=8,
                                                              optimizer="adamw", anneal_epochs=3), epochs=2)
    np.testing.assert_array_equal(plain, other_net)
    # the data's own options still count: they decide what the reference model sees
    _, larger = reference_probabilities(table, CFG.replace(image_size=16), epochs=2)
    assert not np.array_equal(plain, larger)
