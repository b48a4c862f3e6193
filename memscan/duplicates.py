"""Exact and near duplicates inside a dataset, and leaks from one dataset into another.

Pure numpy (faiss for the nearest-neighbour search of large sets), arrays in and out.

- **Exact**: the same decoded pixels at the training size (a 64-bit BLAKE2b of each image's uint8
  array): byte-identical files, and the same picture saved in another lossless format or size that
  decodes to the same pixels.
- **Near**: cosine similarity of two images' descriptors at or above the set's threshold. The
  descriptor is a 16x16 grayscale thumbnail with its mean removed and unit norm, so the cosine is the
  thumbnails' Pearson correlation: blind to brightness and contrast changes, to re-encoding and
  resizing; small crops (12-25% of the width) mostly escape it. Chosen over the trained network's
  penultimate features by measurement (BENCHMARKS.md §16): those put same-class
  images as close as copies. The threshold is relative to the set (``near_threshold``): a pair must
  be ``CLOSER`` times closer (in 1 - correlation) than the set's median nearest neighbour, and at least
  between ``NEAR_FLOOR`` and ``NEAR_CEILING``: CIFAR-10's photos give 0.961, MNIST's look-alike digits 0.987
  (a fixed 0.95 put 15% of MNIST in "duplicate" groups); the ceiling keeps a set made mostly of copies
  from raising the bar above its own copies. And a pair must stand out from the image's other neighbours
  (Lowe's ratio test): its distance ``RATIO`` times smaller than to the ``NEIGHBOURS``-th nearest image.
  Hundreds of MNIST "1"s from different writers lie within the threshold of each other, but none is
  much closer than the rest: the test took MNIST's test set from 107 flagged images to 4 and lost no
  planted copy. A group of more than ``NEIGHBOURS`` near copies of one picture fails it (exact copies
  are found by their hash whatever their number).

The search is exact up to ``EXACT_SEARCH_MAX`` images (faiss's flat index: 12.5 s for 50,000 images on two
cores, 2.8x faster than numpy's blocked products, the fallback without faiss) and approximate above (faiss
HNSW: 98% of the exact neighbours and every pair above the threshold at 50,000; at 1.28 M images an exact
search's N^2 cost projects to ~2.3 hours on two cores, HNSW to ~13 minutes; BENCHMARKS.md §16).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .image_issues import chunk_rows

THUMB_SIDE = 16
NEAR_FLOOR, NEAR_CEILING = 0.95, 0.99
CLOSER = 8
NEIGHBOURS = 5               # searched per image; the last one is the ratio test's reference
RATIO = 4
EXACT_SEARCH_MAX = 100_000   # images; above it the search is faiss HNSW (approximate)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def pixel_hashes(images: np.ndarray, *, chunk: int | None = None) -> np.ndarray:
    """uint64 [N]: a 64-bit BLAKE2b of each image's pixels (equal pixels, equal hash)."""
    out = np.empty(len(images), dtype=np.uint64)
    chunk = chunk or 4 * chunk_rows(images)   # uint8: the same 64 MiB
    for s in range(0, len(images), chunk):
        x = np.ascontiguousarray(images[s:s + chunk])
        for i, row in enumerate(x):
            out[s + i] = int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
    return out


def thumbnails(images: np.ndarray, *, side: int = THUMB_SIDE, chunk: int | None = None) -> np.ndarray:
    """float32 [N, side*side]: grayscale area-averaged thumbnails, mean removed, unit norm (a flat image
    is all zeros: similar to nothing). Images smaller than ``side`` keep their own size."""
    n, s = len(images), images.shape[-1]
    side, chunk = min(side, s), chunk or chunk_rows(images)
    out = np.empty((n, side * side), dtype=np.float32)
    edges = np.linspace(0, s, side + 1).round().astype(int)
    for a in range(0, n, chunk):
        y = np.tensordot(np.asarray(images[a:a + chunk]).astype(np.float32), _LUMA, axes=([1], [0]))  # [c,S,S]
        if s % side == 0:
            t = y.reshape(len(y), side, s // side, side, s // side).mean((2, 4))
        else:   # uneven blocks: sums over the cells' edges
            c = np.add.reduceat(np.add.reduceat(y, edges[:-1], axis=1), edges[:-1], axis=2)
            t = c / np.outer(np.diff(edges), np.diff(edges))
        t = t.reshape(len(y), -1)
        t -= t.mean(1, keepdims=True)
        out[a:a + len(y)] = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-3)
    return out


def nearest(query: np.ndarray, base: np.ndarray, k: int, *, same: bool = False,
            block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(indices int64 [Nq, k], cosine float32 [Nq, k]) of each query row's ``k`` most similar rows of
    ``base``, most similar first; rows are unit vectors. ``same``: query is base, and a row is not its
    own neighbour. Exact up to ``EXACT_SEARCH_MAX`` rows of base, else faiss HNSW when installed."""
    k = min(k, len(base) - (1 if same else 0))
    if k <= 0:
        return np.zeros((len(query), 0), np.int64), np.zeros((len(query), 0), np.float32)
    if _faiss() is not None:
        return _nearest_faiss(query, base, k, same=same, approximate=len(base) > EXACT_SEARCH_MAX)
    idx = np.empty((len(query), k), dtype=np.int64)
    sim = np.empty((len(query), k), dtype=np.float32)
    for a in range(0, len(query), block):
        s = query[a:a + block] @ base.T
        if same:
            s[np.arange(len(s)), np.arange(a, a + len(s))] = -np.inf
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ts = np.take_along_axis(s, top, 1)
        order = np.argsort(-ts, axis=1, kind="stable")
        idx[a:a + len(s)], sim[a:a + len(s)] = np.take_along_axis(top, order, 1), np.take_along_axis(ts, order, 1)
    return idx, sim


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _nearest_faiss(query, base, k: int, *, same: bool, approximate: bool):
    faiss = _faiss()
    if approximate:
        index = faiss.IndexHNSWFlat(base.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    else:
        index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    sim, idx = index.search(np.ascontiguousarray(query, dtype=np.float32), k + (1 if same else 0))
    if same:   # drop each row's own entry (or the last: an identical twin may come first, or HNSW missed it)
        own = idx == np.arange(len(query))[:, None]
        own[~own.any(1), -1] = True
        keep = ~own
        idx, sim = idx[keep].reshape(len(query), k), sim[keep].reshape(len(query), k)
    return idx.astype(np.int64), sim.astype(np.float32)


def near_threshold(nn_similarity: np.ndarray) -> float:
    """The near-duplicate threshold of a set whose images' nearest-neighbour cosines are ``nn_similarity``
    (leave out images with an exact twin: their 1.0 says nothing about the set)."""
    s = np.asarray(nn_similarity, dtype=np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return NEAR_FLOOR
    return float(np.clip(1 - (1 - np.median(s)) / CLOSER, NEAR_FLOOR, NEAR_CEILING))


def stands_out(sim: np.ndarray, threshold: float) -> np.ndarray:
    """bool, like ``sim`` [N, k] (each row's neighbours, most similar first): a near duplicate is at least
    ``threshold`` similar and ``RATIO`` times closer than the row's ``NEIGHBOURS``-th neighbour (a set too
    small to have that many: the threshold alone)."""
    if sim.shape[1] < NEIGHBOURS:
        return sim >= threshold
    return (sim >= threshold) & ((1 - sim) * RATIO <= (1 - sim[:, NEIGHBOURS - 1:NEIGHBOURS]))


def group_ids(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """int64 [n]: connected components of the pairs (i, j), numbered 0, 1, ... by their first member;
    -1 for an image in no pair."""
    parent = np.arange(n)

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a
    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(a) for a in range(n)])
    sizes = np.bincount(roots, minlength=n)
    out = np.full(n, -1, dtype=np.int64)
    grouped = sizes[roots] > 1
    _, out[grouped] = np.unique(roots[grouped], return_inverse=True)
    return out


@dataclass
class Duplicates:
    group: np.ndarray        # int64 [N]: duplicate group, -1 when the image has no duplicate
    kind: np.ndarray         # object [N]: "exact" (same pixels as another member), "near", or ""
    similarity: np.ndarray   # float32 [N]: cosine to its most similar other image (1 for exact); NaN if none
    partner: np.ndarray      # int64 [N]: that image's sample id, -1 if none
    threshold: float = NEAR_FLOOR   # the near-duplicate cosine used (``near_threshold``)
    hashes: np.ndarray | None = None   # uint64 [N] ``pixel_hashes`` (reused to find leaks)

    @property
    def groups(self) -> int:
        return int(self.group.max() + 1) if len(self.group) else 0

    @property
    def redundant(self) -> int:
        """Images that could go while keeping one of each group."""
        return int((self.group >= 0).sum()) - self.groups


def find_duplicates(images: np.ndarray, *, threshold: float | None = None, k: int = NEIGHBOURS,
                    descriptors: np.ndarray | None = None) -> Duplicates:
    """Exact and near duplicate groups of ``images`` (uint8 [N, 3, S, S]); ``threshold`` None: the set's
    own (``near_threshold``)."""
    n = len(images)
    hashes = pixel_hashes(images)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    exact = np.bincount(inverse, minlength=len(first))[inverse] > 1
    desc = thumbnails(images) if descriptors is None else descriptors
    idx, sim = nearest(desc, desc, k, same=True)
    if threshold is None:
        threshold = near_threshold(sim[~exact, 0]) if idx.shape[1] else NEAR_FLOOR
    rows = np.repeat(np.arange(n), idx.shape[1])
    keep = stands_out(sim, threshold).ravel()
    ei = np.flatnonzero(exact)
    pi = np.concatenate([rows[keep], ei])
    pj = np.concatenate([idx.ravel()[keep], first[inverse[ei]]])
    group = group_ids(n, pi, pj)
    partner, best = _closest_in_group(group, idx, sim, pi, pj)
    partner = np.where(exact, _exact_partner(inverse, exact), partner)
    similarity = np.where(exact, 1.0, best).astype(np.float32)
    kind = np.where(exact, "exact", np.where(group >= 0, "near", "")).astype(object)
    return Duplicates(group, kind, similarity, partner.astype(np.int64), float(threshold), hashes)


def _closest_in_group(group, idx, sim, pi, pj) -> tuple[np.ndarray, np.ndarray]:
    """(partner, cosine) per image: its most similar searched neighbour in its own group; an image joined
    only through another's neighbour list takes the first pair it is in (cosine NaN then)."""
    n = len(group)
    partner, best = np.full(n, -1, dtype=np.int64), np.full(n, np.nan, dtype=np.float32)
    if idx.shape[1]:
        same = (group[idx] == group[:, None]) & (group[:, None] >= 0)
        has = same.any(1)
        col = same.argmax(1)
        rows = np.flatnonzero(has)
        partner[rows], best[rows] = idx[rows, col[rows]], sim[rows, col[rows]]
    for a, b in zip(pi.tolist(), pj.tolist()):   # the rare rest: a pair it is in
        if partner[a] < 0:
            partner[a] = b
        if partner[b] < 0:
            partner[b] = a
    return partner, best


def _exact_partner(inverse: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """For each image with an exact twin, another image of the same hash (the first other one)."""
    out = np.full(len(inverse), -1, dtype=np.int64)
    order = np.argsort(inverse, kind="stable")
    inv = inverse[order]
    starts = np.flatnonzero(np.r_[True, inv[1:] != inv[:-1]])
    first = np.repeat(order[starts], np.diff(np.r_[starts, len(inv)]))
    second = np.repeat(order[np.minimum(starts + 1, len(inv) - 1)], np.diff(np.r_[starts, len(inv)]))
    out[order] = np.where(first == order, second, first)
    return np.where(exact, out, -1)


def label_conflicts(group: np.ndarray, labels: np.ndarray, suspicion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(conflict, suspect), bool [N]. ``conflict``: the image's group carries more than one label.
    ``suspect``: its label is not the group's kept label, which is the label of the member the
    training dynamics trust most (lowest ``suspicion``, e.g. ``mislabel_score``): the model saw the
    same picture under two labels and fitted one of them."""
    conflict = np.zeros(len(group), dtype=bool)
    suspect = np.zeros(len(group), dtype=bool)
    members = np.flatnonzero(group >= 0)
    if not len(members):
        return conflict, suspect
    order = members[np.lexsort((suspicion[members], group[members]))]   # by group, most trusted first
    g = group[order]
    start = np.r_[True, g[1:] != g[:-1]]
    kept = np.repeat(labels[order][start], np.diff(np.r_[np.flatnonzero(start), len(order)]))
    suspect[order] = labels[order] != kept
    # a group carries two labels exactly when one of its members differs from its kept label
    conflict[members] = np.bincount(group[order], weights=suspect[order], minlength=group.max() + 1)[group[members]] > 0
    return conflict, suspect


@dataclass
class Leaks:
    """Pairs (one row each): a ``query`` image (e.g. the test set) that duplicates a ``base`` one (training)."""
    query: np.ndarray        # int64 sample id in the query set
    base: np.ndarray         # int64 sample id in the base set
    similarity: np.ndarray   # float32 cosine (1 for exact)
    kind: np.ndarray         # object "exact" | "near"


def find_leaks(query_images: np.ndarray, base_images: np.ndarray, *, threshold: float = NEAR_FLOOR,
               base_descriptors: np.ndarray | None = None, base_hashes: np.ndarray | None = None) -> Leaks:
    """Each query image's most similar base image, where it is an exact or near duplicate (cosine at or
    above ``threshold``: give the base set's own, ``Duplicates.threshold``)."""
    qh = pixel_hashes(query_images)
    bh = pixel_hashes(base_images) if base_hashes is None else base_hashes
    first_of = {}
    for i, h in enumerate(bh.tolist()):
        first_of.setdefault(h, i)
    exact = np.array([first_of.get(h, -1) for h in qh.tolist()], dtype=np.int64)
    bd = thumbnails(base_images) if base_descriptors is None else base_descriptors
    idx, sim = nearest(thumbnails(query_images), bd, NEIGHBOURS)
    base = np.where(exact >= 0, exact, idx[:, 0] if idx.shape[1] else -1)
    s = np.where(exact >= 0, 1.0, sim[:, 0] if idx.shape[1] else -np.inf).astype(np.float32)
    hit = (exact >= 0) | stands_out(sim, threshold)[:, 0] if idx.shape[1] else exact >= 0
    q = np.flatnonzero(hit)
    return Leaks(q.astype(np.int64), base[q].astype(np.int64), s[q],
                 np.where(exact[q] >= 0, "exact", "near").astype(object))
