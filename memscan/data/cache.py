"""Decode every image once into a uint8 [N, 3, S, S] array, and reuse it across runs.

The cache key is the dataset's content fingerprint (relative paths, sizes, mtimes) plus the image
size, so a rerun on an unchanged dataset loads one ``.npy`` file instead of decoding again. The
cache lives under ``$MEMSCAN_CACHE_DIR`` (default ``~/.cache/memscan``), never in the dataset.
Unreadable images are skipped (and listed) unless ``strict``.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .decode import decode, probe_size
from .index import SampleTable

CACHE_VERSION = 2  # bump whenever decode output changes (2: colour-key transparency)


def default_cache_dir() -> Path:
    env = os.environ.get("MEMSCAN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "memscan"


def memory_budget(cache_memory_gib: float | None) -> int:
    """Bytes the decoded images may occupy in RAM; None: half the physical memory."""
    if cache_memory_gib is not None:
        return int(cache_memory_gib * 2 ** 30)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


@dataclass
class DecodedImages:
    images: np.ndarray          # uint8 [N, 3, S, S] in sample-id order of ``table``
    table: SampleTable          # the index, less the skipped images
    skipped: list[dict]         # [{"path": ..., "error": ...}] images that failed to decode
    cache_file: Path | None
    from_cache: bool


def choose_size(table: SampleTable, image_size: int | None, *, workers: int, default: int = 224) -> int:
    """The native size when all images share one square size, else ``default`` (the model's)."""
    if image_size is not None:
        return image_size
    n = len(table)
    probe = range(n) if n <= 5000 else np.random.default_rng(0).choice(n, 2000, replace=False)

    def size_of(i):
        try:
            if table.image_bytes is not None:
                return probe_size(table.image_bytes[i])
            return probe_size(table.file(i))
        except Exception:
            return None
    # one task per worker, not per image: a header probe takes ~20 us, a thread-pool task ~80 us
    chunks = np.array_split(np.asarray(probe), max(1, min(workers, len(probe))))
    with ThreadPoolExecutor(workers) as ex:
        sizes = Counter(s for part in ex.map(lambda c: [size_of(int(i)) for i in c], chunks)
                        for s in part if s is not None)
    if len(sizes) == 1:
        (w, h), = sizes
        if w == h:
            return w
    return default


def _decode_one(table: SampleTable, i: int, size: int):
    try:
        return decode(table.read_bytes(i), size), None
    except Exception as e:  # Pillow raises many types for bad files; all mean "unreadable"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, f"{type(e).__name__}: {msg}"


def load_images(table: SampleTable, *, image_size: int | None = None, strict: bool = False,
                workers: int | None = None, cache_dir: Path | None = None, use_cache: bool = True,
                progress=None, default_size: int = 224, memory_bytes: int | None = None) -> DecodedImages:
    """Decode (or load from cache) all images. ``progress(done, total)`` is called as it goes.

    When the decoded array would exceed ``memory_bytes`` (default: ``memory_budget(None)``), it is
    decoded straight into the on-disk cache and returned memory-mapped (``np.memmap``): RAM then
    holds only the pages being read, and the result is the same array.
    """
    workers = workers or os.cpu_count() or 1
    size = choose_size(table, image_size, workers=workers, default=default_size)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = f"{table.content_fingerprint()}-{size}px-v{CACHE_VERSION}"
    npy, meta_file = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    budget = memory_budget(None) if memory_bytes is None else memory_bytes
    mapped = use_cache and len(table) * 3 * size * size > budget
    if use_cache and npy.exists() and meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text())
            images = np.load(npy, mmap_mode="r" if mapped else None)
            kept = np.asarray(meta["kept"], dtype=np.int64)
            if images.shape[0] == len(kept) and (not strict or not meta["skipped"]):
                if progress:
                    progress(len(table), len(table))
                return DecodedImages(images, table.subset(kept), meta["skipped"], npy, True)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt below

    n = len(table)
    if mapped:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp_npy = npy.with_suffix(f".tmp{os.getpid()}.npy")
        images = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    else:
        images = np.empty((n, 3, size, size), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    skipped = []
    done = 0
    chunk = 256
    with ThreadPoolExecutor(workers) as ex:
        for start in range(0, n, chunk):
            idx = range(start, min(n, start + chunk))
            for i, (arr, err) in zip(idx, ex.map(lambda j: _decode_one(table, j, size), idx)):
                if err is None:
                    images[i] = arr
                    ok[i] = True
                elif strict:
                    raise DatasetError(f"cannot read image '{table.file(i)}' ({err}); fix or remove it, "
                                       "or drop --strict to skip unreadable images")
                else:
                    skipped.append({"path": table.paths[i], "error": err})
            done += len(idx)
            if progress:
                progress(done, n)
    kept = np.flatnonzero(ok)
    if len(kept) == 0:
        raise DatasetError(f"none of the {n} images under '{table.location}' could be read; "
                           f"first error: {skipped[0]['error']}")
    sub = table.subset(kept) if len(kept) < n else table
    if len(set(sub.labels.tolist())) < 2:
        raise DatasetError(f"only one class of '{table.location}' has readable images; memscan needs two")
    if mapped:
        return DecodedImages(_finish_mapped(images, tmp_npy, npy, meta_file, kept, skipped), sub, skipped, npy,
                             False)
    images = images[kept] if len(kept) < n else images
    if use_cache:
        _write_cache(cache_dir, npy, meta_file, images, kept, skipped)
    return DecodedImages(images, sub, skipped, npy if use_cache else None, False)


def _finish_mapped(images, tmp_npy: Path, npy: Path, meta_file: Path, kept, skipped) -> np.memmap:
    """Compact the kept rows (chunk by chunk: never the whole array in RAM), publish the cache
    entry atomically, and map it read-only."""
    try:
        if len(kept) < images.shape[0]:
            tmp2 = npy.with_suffix(f".tmp{os.getpid()}b.npy")
            out = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8, shape=(len(kept),) + images.shape[1:])
            for s in range(0, len(kept), 4096):
                out[s:s + 4096] = images[kept[s:s + 4096]]
            out.flush()
            del out, images
            tmp_npy.unlink()
            tmp_npy = tmp2
        else:
            images.flush()
            del images
        os.replace(tmp_npy, npy)
        tmpj = meta_file.with_suffix(f".tmp{os.getpid()}")
        tmpj.write_text(json.dumps({"kept": kept.tolist(), "skipped": skipped}))
        os.replace(tmpj, meta_file)
    except OSError as e:
        for t in npy.parent.glob(npy.stem + f".tmp{os.getpid()}*"):
            t.unlink(missing_ok=True)
        raise DatasetError(f"cannot write the on-disk image cache '{npy}' ({e.strerror or e}); free space there "
                           "or point MEMSCAN_CACHE_DIR / --cache-dir at a disk with room") from None
    return np.load(npy, mmap_mode="r")


def _write_cache(cache_dir: Path, npy: Path, meta_file: Path, images, kept, skipped):
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = npy.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, images)
        os.replace(tmp, npy)
        tmpj = meta_file.with_suffix(f".tmp{os.getpid()}")
        tmpj.write_text(json.dumps({"kept": kept.tolist(), "skipped": skipped}))
        os.replace(tmpj, meta_file)
    except OSError:
        pass  # a cache we cannot write only costs a re-decode next time
