"""duplicates: hashes, thumbnails, the neighbour search (exact and HNSW), groups, label conflicts, leaks."""
import numpy as np
import pytest

from memscan import duplicates as dup
from memscan.duplicates import (find_duplicates, find_leaks, group_ids, label_conflicts, nearest, pixel_hashes,
                                thumbnails)


def _photos(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(n, 3, 8, 8))
    return np.repeat(np.repeat(small, size // 8, axis=2), size // 8, axis=3).astype(np.uint8)


def _unit(n, d, seed):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_pixel_hashes_equal_only_for_equal_pixels():
    x = _photos(4)
    x[3] = x[1]
    h = pixel_hashes(x, chunk=2)
    assert h[1] == h[3] and len(set(h.tolist())) == 3


def test_thumbnails_ignore_brightness_and_contrast():
    x = _photos(2)
    jittered = np.clip(x[:1].astype(np.float64) * 0.7 + 40, 0, 255).astype(np.uint8)
    t = thumbnails(np.concatenate([x, jittered]))
    assert np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    assert t[0] @ t[2] > 0.99 and t[0] @ t[1] < 0.5
    flat = thumbnails(np.full((1, 3, 32, 32), 90, np.uint8))
    assert not flat.any()                                        # a flat image is similar to nothing


def test_thumbnails_of_uneven_sizes():
    x = _photos(3, size=32)
    t = thumbnails(x[:, :, :30, :30].copy())                     # 30 is not a multiple of 16
    assert t.shape == (3, 256) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)


def test_nearest_matches_brute_force_and_skips_itself():
    v = _unit(300, 16, seed=0)
    idx, sim = nearest(v, v, 3, same=True, block=64)
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    want = np.argsort(-s, axis=1)[:, :3]
    assert (idx == want).all()
    np.testing.assert_allclose(sim, np.take_along_axis(s, want, 1), rtol=1e-5)


def test_hnsw_search_finds_the_true_neighbours(monkeypatch):
    pytest.importorskip("faiss")
    v = _unit(2000, 32, seed=1)
    exact_idx, _ = nearest(v, v, 5, same=True)
    monkeypatch.setattr(dup, "EXACT_SEARCH_MAX", 100)
    idx, sim = nearest(v, v, 5, same=True)
    assert not (idx == np.arange(2000)[:, None]).any()
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(idx.tolist(), exact_idx.tolist())])
    assert recall > 0.95
    assert (np.diff(sim, axis=1) <= 1e-6).all()


def test_group_ids_are_connected_components():
    g = group_ids(7, np.array([0, 1, 5]), np.array([1, 2, 6]))
    assert g.tolist() == [0, 0, 0, -1, -1, 1, 1]


def test_find_duplicates_exact_and_near_copies():
    x = _photos(40)
    x[10] = x[3]                                                              # exact copy
    x[20] = np.clip(x[5].astype(np.int16) + 25, 0, 255).astype(np.uint8)      # brighter copy
    d = find_duplicates(x)
    assert d.group[3] == d.group[10] >= 0 and d.group[5] == d.group[20] >= 0 and d.group[3] != d.group[5]
    assert d.kind[3] == d.kind[10] == "exact" and d.kind[20] == "near"
    assert d.partner[10] == 3 and d.partner[3] == 10 and d.partner[20] == 5
    assert d.similarity[3] == 1 and d.similarity[20] > 0.95
    assert (d.group >= 0).sum() == 4 and d.groups == 2 and d.redundant == 2
    assert np.isnan(d.similarity[0]) and d.partner[0] == -1 and d.kind[0] == ""


def test_label_conflicts_single_out_the_less_trusted_label():
    group = np.array([0, 0, 0, 1, 1, -1])
    labels = np.array([2, 2, 7, 4, 4, 1])
    suspicion = np.array([0.9, 0.1, 0.8, 0.5, 0.5, 0.99])
    conflict, suspect = label_conflicts(group, labels, suspicion)
    assert conflict.tolist() == [True, True, True, False, False, False]
    assert suspect.tolist() == [False, False, True, False, False, False]   # label 2 is kept: member 1 is trusted most


def test_find_leaks_pairs_each_test_image_with_its_training_twin():
    train = _photos(30, seed=0)
    test = _photos(10, seed=1)
    test[2] = train[7]
    test[5] = np.clip(train[11].astype(np.int16) - 20, 0, 255).astype(np.uint8)
    lk = find_leaks(test, train)
    assert lk.query.tolist() == [2, 5] and lk.base.tolist() == [7, 11]
    assert lk.kind.tolist() == ["exact", "near"] and lk.similarity[0] == 1


def test_thumbnails_of_images_smaller_than_the_thumbnail():
    t = thumbnails(_photos(2, size=8))
    assert t.shape == (2, 64) and np.isfinite(t).all()


def test_numpy_fallback_equals_faiss(monkeypatch):
    pytest.importorskip("faiss")
    v = _unit(500, 16, seed=2)
    fi, fs = nearest(v, v, 4, same=True)
    monkeypatch.setattr(dup, "_faiss", lambda: None)
    ni, ns = nearest(v, v, 4, same=True, block=100)
    assert (fi == ni).all()
    np.testing.assert_allclose(fs, ns, rtol=1e-5, atol=1e-6)


def test_a_set_made_mostly_of_copies_still_finds_them():
    """The threshold follows the set's median neighbour, capped: when every image has a near copy the copies
    must not raise the bar above themselves."""
    rng = np.random.default_rng(3)
    x = _photos(60)
    copies = np.clip(x.astype(np.int16) + rng.integers(-2, 3, size=x.shape), 0, 255).astype(np.uint8)
    d = find_duplicates(np.concatenate([x, copies]))
    assert d.threshold == dup.NEAR_CEILING
    assert (d.group >= 0).all() and d.groups == 60
    assert (d.group[:60] == d.group[60:]).all()


def test_tiny_sets_use_the_threshold_alone():
    x = _photos(3)
    x[1] = np.clip(x[0].astype(np.int16) + 10, 0, 255).astype(np.uint8)
    d = find_duplicates(x)
    assert d.group[0] == d.group[1] >= 0 and d.group[2] == -1


def test_partner_is_in_the_same_group():
    rng = np.random.default_rng(4)
    x = _photos(80)
    for i in range(0, 20, 2):   # pairs of near copies
        x[i + 1] = np.clip(x[i].astype(np.int16) + rng.integers(-3, 4, size=x[i].shape), 0, 255).astype(np.uint8)
    d = find_duplicates(x)
    grouped = np.flatnonzero(d.group >= 0)
    assert len(grouped) >= 20
    assert (d.group[d.partner[grouped]] == d.group[grouped]).all() and (d.partner[grouped] != grouped).all()
