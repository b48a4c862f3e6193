import numpy as np
import pytest

from memscan.data.noise import inject_noise, load_matrix, validate_matrix
from memscan.errors import ConfigError


def balanced(n, k):
    return np.arange(n) % k


# --------------------------------------------------------------------------- symmetric

@pytest.mark.parametrize("n,k,rate", [(1000, 5, 0.3), (999, 3, 0.25), (37, 2, 0.4), (40, 4, 0.15)])
def test_symmetric_flips_exact_count_never_to_true_class(n, k, rate):
    y = balanced(n, k)
    r = inject_noise(y, k, rate=rate, kind="symmetric", seed=1)
    assert r.flipped.sum() == round(rate * n)
    assert (r.labels != y).sum() == round(rate * n)
    np.testing.assert_array_equal(r.flipped, r.labels != y)
    assert (r.labels[r.flipped] != y[r.flipped]).all()
    np.testing.assert_array_equal(r.labels[~r.flipped], y[~r.flipped])
    assert r.labels.min() >= 0 and r.labels.max() < k
    assert r.actual_rate == pytest.approx(round(rate * n) / n)
    assert r.rate == rate and r.kind == "symmetric"


def test_symmetric_targets_roughly_uniform_over_other_classes():
    k, n = 4, 20000
    y = balanced(n, k)
    r = inject_noise(y, k, rate=0.5, kind="symmetric", seed=0)
    shift = (r.labels[r.flipped] - y[r.flipped]) % k
    freq = np.bincount(shift, minlength=k) / len(shift)
    assert freq[0] == 0
    np.testing.assert_allclose(freq[1:], 1 / 3, atol=0.02)
    # and the flipped samples are spread over the true classes
    np.testing.assert_allclose(np.bincount(y[r.flipped], minlength=k) / r.flipped.sum(), 0.25, atol=0.02)


def test_symmetric_is_seeded():
    y = balanced(500, 5)
    a = inject_noise(y, 5, rate=0.2, seed=7)
    b = inject_noise(y, 5, rate=0.2, seed=7)
    c = inject_noise(y, 5, rate=0.2, seed=8)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.flipped, b.flipped)
    assert not np.array_equal(a.flipped, c.flipped)
    assert a.flipped.sum() == c.flipped.sum() == 100


def test_input_labels_are_not_modified():
    y = balanced(100, 4)
    keep = y.copy()
    inject_noise(y, 4, rate=0.5, seed=0)
    np.testing.assert_array_equal(y, keep)


# --------------------------------------------------------------------------- pairflip

@pytest.mark.parametrize("n,k,rate", [(1000, 5, 0.3), (301, 3, 0.1), (50, 2, 0.2)])
def test_pairflip_maps_to_next_class(n, k, rate):
    y = balanced(n, k)
    r = inject_noise(y, k, rate=rate, kind="pairflip", seed=2)
    assert r.flipped.sum() == round(rate * n)
    np.testing.assert_array_equal(r.labels[r.flipped], (y[r.flipped] + 1) % k)
    np.testing.assert_array_equal(r.labels[~r.flipped], y[~r.flipped])
    if n >= 300:
        assert set(y[r.flipped].tolist()) == set(range(k))    # every class contributes flips


def test_pairflip_last_class_wraps_to_zero():
    y = np.array([2] * 8 + [0, 1])
    r = inject_noise(y, 3, rate=0.5, kind="pairflip", seed=0)
    assert r.flipped.sum() == 5
    for old, new, f in zip(y, r.labels, r.flipped):
        if f:
            assert new == (old + 1) % 3


def test_pairflip_seeded():
    y = balanced(200, 4)
    a = inject_noise(y, 4, rate=0.3, kind="pairflip", seed=5)
    b = inject_noise(y, 4, rate=0.3, kind="pairflip", seed=5)
    c = inject_noise(y, 4, rate=0.3, kind="pairflip", seed=6)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


# --------------------------------------------------------------------------- matrix

def test_matrix_sampling_matches_rows():
    m = np.array([[0.7, 0.2, 0.1],
                  [0.0, 0.6, 0.4],
                  [0.25, 0.25, 0.5]])
    n = 30000
    y = balanced(n, 3)
    r = inject_noise(y, 3, kind="matrix", matrix=m, seed=0)
    for i in range(3):
        freq = np.bincount(r.labels[y == i], minlength=3) / (y == i).sum()
        np.testing.assert_allclose(freq, m[i], atol=0.02)
    assert (r.labels[y == 1] != 0).all()                     # a zero entry is never sampled
    np.testing.assert_array_equal(r.flipped, r.labels != y)
    expected_rate = np.mean([1 - m[i, i] for i in range(3)])
    assert r.actual_rate == pytest.approx(expected_rate, abs=0.015)
    assert r.kind == "matrix"


def test_identity_matrix_changes_nothing_and_permutation_moves_everything():
    y = balanced(300, 3)
    r = inject_noise(y, 3, kind="matrix", matrix=np.eye(3), seed=0)
    np.testing.assert_array_equal(r.labels, y)
    assert r.actual_rate == 0.0
    perm = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float)
    r = inject_noise(y, 3, kind="matrix", matrix=perm, seed=0)
    np.testing.assert_array_equal(r.labels, (y + 1) % 3)
    assert r.actual_rate == 1.0


def test_matrix_ignores_rate():
    y = balanced(100, 2)
    r = inject_noise(y, 2, rate=0, kind="matrix", matrix=[[0.5, 0.5], [0.5, 0.5]], seed=0)
    assert 0 < r.actual_rate < 1


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
@pytest.mark.parametrize("rate", [0, 1, -0.1, 1.5, float("nan")])
def test_bad_rate(kind, rate):
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        inject_noise(balanced(100, 4), 4, rate=rate, kind=kind)


def test_unknown_kind():
    with pytest.raises(ConfigError, match="symmetric, pairflip, matrix"):
        inject_noise(balanced(10, 2), 2, rate=0.1, kind="asymmetric")


def test_one_class():
    with pytest.raises(ConfigError, match="at least two classes"):
        inject_noise(np.zeros(10, int), 1, rate=0.1)


def test_matrix_rows_must_sum_to_one():
    m = [[0.5, 0.5, 0.0], [0.2, 0.2, 0.2], [0, 0, 1]]
    with pytest.raises(ConfigError, match="row 2 sums to 0.6"):
        inject_noise(balanced(30, 3), 3, kind="matrix", matrix=m)


def test_matrix_negative_entries():
    with pytest.raises(ConfigError, match="row 1 .*negative"):
        validate_matrix([[1.5, -0.5], [0, 1]], 2)


@pytest.mark.parametrize("m", [np.eye(2), np.eye(4), np.ones((3, 2)) / 2, [0.5, 0.5, 0.0], 1.0])
def test_matrix_wrong_size(m):
    with pytest.raises(ConfigError, match="3 classes; give a 3x3 matrix"):
        inject_noise(balanced(30, 3), 3, kind="matrix", matrix=m)


def test_matrix_kind_needs_a_matrix():
    with pytest.raises(ConfigError, match="needs a transition matrix"):
        inject_noise(balanced(30, 3), 3, kind="matrix")


def test_pairflip_that_empties_a_class():
    # two samples, two classes, rate 0.5: exactly one sample moves to the other class,
    # so whichever is picked, its class is left with no samples
    for seed in range(5):
        with pytest.raises(ConfigError, match="leaves class [01] with no samples"):
            inject_noise(np.array([0, 1]), 2, rate=0.5, kind="pairflip", seed=seed)


def test_symmetric_that_empties_a_class():
    # one sample per class, two of them move: every class survives only if the two moves are a swap
    # (probability 1/4), otherwise a class empties and the call must refuse
    y = np.array([0, 1, 2])
    outcomes = set()
    for seed in range(30):
        try:
            r = inject_noise(y, 3, rate=2 / 3, kind="symmetric", seed=seed)
            assert set(r.labels.tolist()) == {0, 1, 2}   # accepted only when no class is empty
            outcomes.add("ok")
        except ConfigError as e:
            assert "with no samples" in str(e)
            outcomes.add("empty")
    assert outcomes == {"ok", "empty"}


def test_class_already_empty_before_noise_is_not_blamed_on_the_rate():
    # class 2 has no samples to begin with (e.g. all its images were unreadable): noise still works
    y = balanced(100, 2)
    r = inject_noise(y, 3, rate=0.2, kind="pairflip", seed=0)
    assert r.flipped.sum() == 20
    np.testing.assert_array_equal(r.labels[r.flipped], (y[r.flipped] + 1) % 3)


def test_matrix_that_empties_a_class():
    y = balanced(100, 2)
    with pytest.raises(ConfigError, match="leaves class 0 with no samples"):
        inject_noise(y, 2, kind="matrix", matrix=[[0, 1], [0, 1]])


# --------------------------------------------------------------------------- load_matrix

def test_load_matrix_csv(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("0.8,0.2,0\n0,0.9,0.1\n0.3,0,0.7\n")
    m = load_matrix(f, 3)
    np.testing.assert_allclose(m, [[0.8, 0.2, 0], [0, 0.9, 0.1], [0.3, 0, 0.7]])
    y = balanced(30000, 3)
    r = inject_noise(y, 3, kind="matrix", matrix=m, seed=1)
    np.testing.assert_allclose(np.bincount(r.labels[y == 2], minlength=3) / 10000, [0.3, 0, 0.7], atol=0.02)


def test_load_matrix_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read transition matrix"):
        load_matrix(tmp_path / "missing.csv", 2)
    bad = tmp_path / "bad.csv"
    bad.write_text("0.5,half\n0,1\n")
    with pytest.raises(ConfigError, match="cannot read transition matrix"):
        load_matrix(bad, 2)
    small = tmp_path / "small.csv"
    small.write_text("1,0\n0,1\n")
    with pytest.raises(ConfigError, match=r"small\.csv' is 2x2 but the dataset has 3 classes"):
        load_matrix(small, 3)
    off = tmp_path / "off.csv"
    off.write_text("1,0\n0.5,0.6\n")
    with pytest.raises(ConfigError, match=r"off\.csv' row 2 sums to 1\.1"):
        load_matrix(off, 2)


# --------------------------------------------------------------------------- instance-dependent

def ambiguous_by_construction(n=6000, k=4, seed=0):
    """Reference probabilities where the first third is very ambiguous (true class 0.4, the rest mostly on
    the next class), the middle third a little, the last third not at all."""
    y = balanced(n, k)
    amb = np.repeat([0.6, 0.15, 0.01], n // 3)
    p = np.zeros((n, k))
    p[np.arange(n), y] = 1 - amb
    p[np.arange(n), (y + 1) % k] += 0.8 * amb
    p[np.arange(n), (y + 2) % k] += 0.2 * amb
    return y, p, amb


@pytest.mark.parametrize("rate", [0.01, 0.2, 0.4])
def test_instance_noise_exact_count_and_never_the_true_class(rate):
    y, p, _ = ambiguous_by_construction()
    r = inject_noise(y, 4, rate=rate, kind="instance", seed=3, probs=p)
    assert r.flipped.sum() == round(rate * len(y)) and r.kind == "instance"
    assert (r.labels[r.flipped] != y[r.flipped]).all()
    np.testing.assert_array_equal(r.labels[~r.flipped], y[~r.flipped])


def test_instance_noise_flips_the_ambiguous_into_the_classes_they_resemble():
    y, p, amb = ambiguous_by_construction()
    r = inject_noise(y, 4, rate=0.2, kind="instance", seed=0, probs=p)
    by_group = [r.flipped[amb == a].mean() for a in (0.6, 0.15, 0.01)]
    # probability of being flipped grows with ambiguity (weights 0.6 : 0.15 : 0.01)
    assert by_group[0] > 2 * by_group[1] > 10 * by_group[2]
    shift = (r.labels[r.flipped] - y[r.flipped]) % 4
    freq = np.bincount(shift, minlength=4) / len(shift)
    np.testing.assert_allclose(freq[1:], [0.8, 0.2, 0.0], atol=0.03)   # the reference model's confusion


def test_instance_noise_is_seeded_and_needs_valid_probabilities():
    y, p, _ = ambiguous_by_construction(n=600)
    a = inject_noise(y, 4, rate=0.1, kind="instance", seed=5, probs=p)
    b = inject_noise(y, 4, rate=0.1, kind="instance", seed=5, probs=p)
    c = inject_noise(y, 4, rate=0.1, kind="instance", seed=6, probs=p)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.flipped, c.flipped)
    with pytest.raises(ConfigError, match="reference model"):
        inject_noise(y, 4, rate=0.1, kind="instance", seed=0)
    with pytest.raises(ConfigError, match="600x4"):
        inject_noise(y, 4, rate=0.1, kind="instance", seed=0, probs=p[:10])
    bad = p.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ConfigError, match="finite"):
        inject_noise(y, 4, rate=0.1, kind="instance", seed=0, probs=bad)


def test_instance_noise_with_a_certain_reference_still_flips_exactly():
    y = balanced(100, 4)
    p = np.eye(4)[y]                     # a reference model certain of every label
    r = inject_noise(y, 4, rate=0.3, kind="instance", seed=0, probs=p)
    assert r.flipped.sum() == 30 and (r.labels[r.flipped] != y[r.flipped]).all()
