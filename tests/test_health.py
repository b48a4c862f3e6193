import numpy as np
import pytest

from memscan.health import confident_joint, dataset_health, estimate_joint, noise_matrix, overlapping_pairs


def test_confident_joint_counts_and_skips_unconfident():
    labels = np.array([0, 0, 1, 1, 2, 2])
    conf = np.array([0, 1, 1, -1, 2, 0])
    c = confident_joint(labels, conf, 3)
    assert c.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_joint_recovers_a_known_noise_matrix():
    """Flips drawn from a known matrix, and a confident class equal to the true label where the model is
    confident (70% of samples): the estimate recovers the matrix and the noise rate."""
    rng = np.random.default_rng(0)
    k, n = 3, 60000
    true = rng.integers(0, k, n)
    m = np.array([[0.8, 0.1, 0.0], [0.2, 0.9, 0.0], [0.0, 0.0, 1.0]])   # P(given i | true j): columns sum to 1
    given = np.array([rng.choice(k, p=m[:, t]) for t in true])
    conf = np.where(rng.random(n) < 0.7, true, -1)
    h = dataset_health(given, conf, ["a", "b", "c"])
    np.testing.assert_allclose(np.array(h["noise_matrix"]), m, atol=0.01)
    assert h["label_health"] == pytest.approx(np.mean(given == true), abs=0.005)
    assert h["overlapping_pairs"][0]["classes"] == ["a", "b"]
    pair = h["overlapping_pairs"][0]
    assert pair["given_a_true_b"] == pytest.approx(np.sum((given == 0) & (true == 1)), rel=0.05)
    assert pair["given_b_true_a"] == pytest.approx(np.sum((given == 1) & (true == 0)), rel=0.05)
    assert all(p["classes"] != ["a", "c"] for p in h["overlapping_pairs"])      # no mass: not listed


def test_a_class_without_confident_samples_keeps_its_labels():
    labels = np.array([0, 0, 1, 1])
    conf = np.array([0, 0, -1, -1])
    j = estimate_joint(labels, conf, 2)
    np.testing.assert_allclose(j, [[0.5, 0.0], [0.0, 0.5]])
    nm = noise_matrix(np.array([[0.5, 0.0], [0.5, 0.0]]))
    assert nm[:, 0].tolist() == [0.5, 0.5] and np.isnan(nm[:, 1]).all()
    assert overlapping_pairs(j, ["x", "y"], 4) == []
