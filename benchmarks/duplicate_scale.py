"""Nearest-neighbour search for duplicates at scale: exact search (faiss flat, numpy) against faiss HNSW.

Descriptors are the 16x16 thumbnails ``memscan.duplicates`` uses, of CIFAR-10 train (50,000 real
images); larger sizes stack noisy copies of them (timing only: their recall is not a property of real
data). For each size: seconds to find every image's 5 nearest neighbours, exactly and with HNSW (build +
search), and HNSW's recall of the exact neighbours and of the pairs above the duplicate threshold.
Threads: as OMP_NUM_THREADS says (faiss and numpy's BLAS both follow it).

    OMP_NUM_THREADS=2 python benchmarks/duplicate_scale.py ../shared/data/cifar10/train.parquet \\
        --sizes 50000 200000 --out benchmarks/results/duplicate-scale-machineA.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from memscan.data import load_images, load_index
from memscan.duplicates import _nearest_faiss, near_threshold, nearest, thumbnails


def descriptors(dataset: Path, n: int) -> np.ndarray:
    d = load_images(load_index(dataset), image_size=32)
    t = thumbnails(d.images)
    rng = np.random.default_rng(0)
    parts, have = [t], len(t)
    while have < n:
        extra = t + rng.normal(0, 0.05, size=t.shape).astype(np.float32)
        parts.append(extra / np.linalg.norm(extra, axis=1, keepdims=True))
        have += len(t)
    return np.concatenate(parts)[:n]


def _numpy_exact(v, k):
    from unittest import mock
    with mock.patch("memscan.duplicates._faiss", return_value=None):
        return nearest(v, v, k, same=True)


def measure(v: np.ndarray, *, exact: bool, k: int = 5) -> dict:
    row = {"n": len(v)}
    t = time.perf_counter()
    hi, hs = _nearest_faiss(v, v, k, same=True, approximate=True)
    row["hnsw_s"] = round(time.perf_counter() - t, 2)
    if exact:
        t = time.perf_counter()
        ei, es = _nearest_faiss(v, v, k, same=True, approximate=False)
        row["exact_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        _numpy_exact(v, k)
        row["exact_numpy_s"] = round(time.perf_counter() - t, 2)
        row["hnsw_recall_at_5"] = round(float(np.mean([len(set(a) & set(b)) / k for a, b in
                                                       zip(hi.tolist(), ei.tolist())])), 4)
        pairs = lambda i, s: {(a, b) for a, row_i, row_s in zip(range(len(i)), i.tolist(), s.tolist())
                              for b, x in zip(row_i, row_s) if x >= threshold}
        threshold = near_threshold(es[:, 0])
        ep, hp = pairs(ei, es), pairs(hi, hs)
        row["pairs_above_threshold"] = len(ep)
        row["hnsw_pair_recall"] = round(len(ep & hp) / max(1, len(ep)), 4)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[50000, 200000])
    ap.add_argument("--exact-up-to", type=int, default=200000)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    v = descriptors(a.dataset, max(a.sizes))
    rows = [measure(v[:n], exact=n <= a.exact_up_to) for n in a.sizes]
    for r in rows:
        print(json.dumps(r))
    big = 1_281_167
    last = rows[-1]
    proj = {"n": big, "hnsw_s_projected": round(last["hnsw_s"] * big / last["n"] * np.log(big) / np.log(last["n"]), 0)}
    ex = [r for r in rows if "exact_s" in r][-1]
    proj["exact_s_projected"] = round(ex["exact_s"] * (big / ex["n"]) ** 2, 0)
    print(json.dumps(proj))
    if a.out:
        a.out.write_text(json.dumps({"rows": rows, "projection_1.28M": proj, "machine": platform.processor() or
                                     platform.machine()}, indent=1))


if __name__ == "__main__":
    main()
