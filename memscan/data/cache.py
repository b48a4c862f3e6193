"""Decode every image once into a uint8 [N, 3, S, S] array, and reuse it across runs.

The cache key is the dataset's content fingerprint (relative paths, sizes, mtimes), its absolute
folder, the image size and the pixel limit, so a rerun on an unchanged dataset loads one ``.npy``
file instead of decoding again. The cache lives under ``$MEMSCAN_CACHE_DIR`` (default
``~/.cache/memscan``), never in the dataset. Each entry's JSON side file holds CRC-32s of its
array, checked on every load: a damaged entry is rebuilt, never trained on. Unreadable images are
skipped (and listed) unless ``strict``.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import threading
import zlib
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError, OutputError
from ..files import write_atomic_with, write_text_atomic
from .decode import DEFAULT_MAX_PIXELS, decode_sized, probe_size
from .index import SampleTable, open_regular

# bump whenever decode output or the entry format changes (2: colour-key transparency; 3: JPEG draft,
# checksums, key on the dataset's absolute folder; 4: each image's own width and height)
CACHE_VERSION = 4
CHECK_BLOCK_BYTES = 16 * 2 ** 20


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
    notes: list[str] = field(default_factory=list)   # one line each, for the user (a rebuilt cache entry)
    sizes: np.ndarray | None = None   # int32 [N, 2]: each image's own (width, height) before resizing


def cache_key(table: SampleTable, size: int, max_pixels: int | None = None) -> str:
    """Two datasets with the same names, sizes and mtimes in different folders must not share an
    entry, so the absolute folder is part of the key; so is the pixel limit (it decides what is skipped)."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    where = f"{table.content_fingerprint()}|{table.root.resolve()}|{table.location.resolve()}|{limit}"
    return f"{hashlib.sha256(where.encode()).hexdigest()[:20]}-{size}px-v{CACHE_VERSION}"


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
            with open_regular(table.file(i)) as f:   # a FIFO would block even a header read
                return probe_size(f)
        except Exception:
            return None
    # one task per worker, not per image: a header probe takes ~20 us, a thread-pool task ~80 us
    chunks = np.array_split(np.asarray(probe), max(1, min(workers, len(probe))))
    pool = _DaemonPool(workers)
    try:
        sizes = Counter(s for part in pool.map(lambda c: [size_of(int(i)) for i in c], chunks)
                        for s in part if s is not None)
    finally:
        pool.close()
    if len(sizes) == 1:
        (w, h), = sizes
        if w == h:
            return w
    return default


def _error_text(e: Exception) -> str:
    """One line for a skipped image. Pillow names the stream it read from, which for bytes is a
    ``<_io.BytesIO object at 0x...>`` repr that means nothing to a user: dropped."""
    msg = re.sub(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>", "", str(e).splitlines()[0] if str(e) else "")
    if isinstance(e, DatasetError):   # memscan's own reasons (not a regular file, too many pixels) read alone
        return msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _decode_one(table: SampleTable, i: int, size: int, max_pixels: int | None):
    """((array, (width, height)), None) or (None, error text)."""
    try:
        return decode_sized(table.read_bytes(i), size, max_pixels=max_pixels), None
    except Exception as e:  # Pillow raises many types for bad files; all mean "unreadable"
        return None, _error_text(e)


class _DaemonPool:
    """``map`` on daemon threads. ThreadPoolExecutor joins its threads when the interpreter exits,
    so one worker stuck in a read (a hung network file system) would keep an interrupted run alive;
    a daemon thread cannot. ``close`` cancels every task not yet started."""

    def __init__(self, workers: int):
        self._jobs = queue.SimpleQueue()
        self._futures: list[Future] = []
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(max(1, workers))]
        for t in self._threads:
            t.start()

    def _work(self):
        while (job := self._jobs.get()) is not None:
            fut, fn, arg = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(arg))
                except BaseException as e:
                    fut.set_exception(e)

    def map(self, fn, items) -> list:
        self._futures = [Future() for _ in items]
        for f, x in zip(self._futures, items):
            self._jobs.put((f, fn, x))
        return [f.result() for f in self._futures]   # a KeyboardInterrupt in the main thread stops the wait

    def close(self):
        for f in self._futures:
            f.cancel()
        for _ in self._threads:
            self._jobs.put(None)


def _remove(paths) -> None:
    for p in paths:
        try:
            Path(p).unlink(missing_ok=True)
        except OSError:   # a read-only cache folder: nothing to clean, and the real error must not be masked
            pass


def _remove_stale_temps(cache_dir: Path, key: str) -> None:
    """Temporary files of this entry left by a process that was killed (SIGKILL skips ``finally``)."""
    for t in cache_dir.glob(f"{key}*.tmp*") if cache_dir.is_dir() else ():
        m = re.search(r"\.tmp(\d+)", t.name[len(key):])
        if m and not _alive(int(m.group(1))):
            t.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # PermissionError: someone else's process
        return True
    return True


def _checksums(images: np.ndarray, workers: int = 1) -> list[int]:
    """CRC-32 of each ~16 MiB block of rows. CRC-32 catches any accidental damage (flipped bits, zeroed
    pages, a short write) and runs at ~3 GB/s (blake2b: ~0.6); blocks let threads share the work."""
    rows = max(1, CHECK_BLOCK_BYTES // max(1, int(np.prod(images.shape[1:]))))
    blocks = range(0, len(images), rows)

    def crc(s):   # zlib releases the GIL: threads (and the page faults of a memory map) run in parallel
        return zlib.crc32(np.ascontiguousarray(images[s:s + rows]))
    if workers < 2 or len(blocks) < 2:
        return [crc(s) for s in blocks]
    with ThreadPoolExecutor(min(workers, len(blocks))) as ex:
        return list(ex.map(crc, blocks))


def _entry_meta(images: np.ndarray, kept, skipped, sizes: np.ndarray, workers: int) -> str:
    return json.dumps({"shape": list(images.shape), "kept": kept.tolist(), "skipped": skipped,
                       "sizes": sizes.reshape(-1).tolist(), "crc32": _checksums(images, workers)})


class _Damaged(Exception):
    """What is wrong with a cache entry, in words."""


def _read_entry(npy: Path, meta_file: Path, n: int, size: int, mapped: bool, workers: int):
    """(images, kept, skipped) of a cache entry, checked against its checksums; ``_Damaged`` if not whole."""
    for f in (meta_file, npy):   # a FIFO or device in the cache must not hang or flood the run
        if f.exists() and not f.is_file():
            raise _Damaged(f"'{f.name}' is not a regular file")
    try:
        meta = json.loads(meta_file.read_text())
        kept, skipped, sums = np.asarray(meta["kept"], dtype=np.int64), meta["skipped"], meta["crc32"]
        shape = tuple(meta["shape"])
        sizes = np.asarray(meta["sizes"], dtype=np.int32).reshape(-1, 2)
    except FileNotFoundError:
        raise _Damaged("its JSON side file is missing") from None
    except (OSError, ValueError, KeyError, TypeError):   # ValueError: bad JSON, bad UTF-8, bad numbers
        raise _Damaged("its JSON side file is unreadable") from None
    try:
        images = np.load(npy, mmap_mode="r")   # checks the header and that the file holds the whole array
    except FileNotFoundError:
        raise _Damaged("its .npy file is missing") from None
    except (OSError, ValueError, EOFError):   # EOFError: a zero-byte file (escaping, click made it a silent exit 130)
        raise _Damaged("its .npy file is empty, truncated or garbled") from None
    if images.shape != (len(kept), 3, size, size) or images.shape != shape or images.dtype != np.uint8:
        raise _Damaged("wrong shape")
    if len(kept) and (kept[0] < 0 or kept[-1] >= n or (np.diff(kept) <= 0).any()) or len(sizes) != len(kept):
        raise _Damaged("its JSON side file does not fit the dataset")
    if not mapped:
        images = np.array(images)   # the in-memory copy is what is checked, and used
    # every byte is checked before training, memory-mapped or not: one streamed pass, like one epoch
    if _checksums(images, workers) != sums:
        raise _Damaged("checksum mismatch")
    return images, kept, skipped, sizes


def _from_cache(npy: Path, meta_file: Path, table: SampleTable, size: int, *, mapped: bool, strict: bool,
                workers: int):
    """(DecodedImages or None, note or None). A damaged entry is rebuilt (over it) and the note says so."""
    if not npy.exists() and not meta_file.exists():
        return None, None
    try:
        images, kept, skipped, sizes = _read_entry(npy, meta_file, len(table), size, mapped, workers)
    except Exception as e:  # whatever else is wrong with a cache entry, rebuilding it is the fix
        why = str(e) if isinstance(e, _Damaged) else f"unreadable: {type(e).__name__}"
        return None, f"decode cache entry '{npy}' was damaged ({why}); rebuilt it"
    if strict and skipped:
        return None, None   # decoding again raises, naming the unreadable file
    return DecodedImages(images, table.subset(kept), skipped, npy, True, sizes=sizes), None


def _check_kept(table: SampleTable, kept: np.ndarray, skipped: list[dict]) -> SampleTable:
    n = len(table)
    if len(kept) == 0:
        raise DatasetError(f"none of the {n} images under '{table.location}' could be read; "
                           f"first error: {skipped[0]['error']}")
    sub = table.subset(kept) if len(kept) < n else table
    if len(set(sub.labels.tolist())) < 2:
        raise DatasetError(f"only one class of '{table.location}' has readable images; memscan needs two")
    return sub


def _decode_into(images: np.ndarray, table: SampleTable, size: int, *, strict: bool, workers: int,
                 max_pixels: int | None, progress) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """Decode every image into ``images``; (indices decoded, skipped images, [n, 2] own sizes)."""
    n = len(table)
    ok = np.zeros(n, dtype=bool)
    sizes = np.zeros((n, 2), dtype=np.int32)
    skipped = []
    pool = _DaemonPool(workers)
    try:
        for start in range(0, n, 256):
            idx = range(start, min(n, start + 256))
            for i, (got, err) in zip(idx, pool.map(lambda j: _decode_one(table, j, size, max_pixels), idx)):
                if err is None:
                    images[i], sizes[i] = got
                    ok[i] = True
                elif strict:
                    raise DatasetError(f"cannot read image '{table.file(i)}' ({err}); fix or remove it, "
                                       "or drop --strict to skip unreadable images")
                else:
                    skipped.append({"path": table.paths[i], "error": err})
            if progress:
                progress(idx.stop, n)
    finally:
        pool.close()   # on an interrupt: what has not started never will
    return np.flatnonzero(ok), skipped, sizes


def load_images(table: SampleTable, *, image_size: int | None = None, strict: bool = False,
                workers: int | None = None, cache_dir: Path | None = None, use_cache: bool = True,
                progress=None, default_size: int = 224, memory_bytes: int | None = None,
                max_pixels: int | None = None) -> DecodedImages:
    """Decode (or load from cache) all images. ``progress(done, total)`` is called as it goes.

    When the decoded array would exceed ``memory_bytes`` (default: ``memory_budget(None)``), it is
    decoded straight into the on-disk cache and returned memory-mapped (``np.memmap``): RAM then
    holds only the pages being read, and the result is the same array. Images of more than
    ``max_pixels`` (default ``decode.DEFAULT_MAX_PIXELS``) are skipped as unreadable. A damaged
    cache entry is rebuilt, and ``notes`` says so.
    """
    workers = workers or os.cpu_count() or 1
    size = choose_size(table, image_size, workers=workers, default=default_size)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(table, size, max_pixels)
    npy, meta_file = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    budget = memory_budget(None) if memory_bytes is None else memory_bytes
    mapped = use_cache and len(table) * 3 * size * size > budget
    notes = []
    if use_cache:
        _remove_stale_temps(cache_dir, key)
        hit, note = _from_cache(npy, meta_file, table, size, mapped=mapped, strict=strict, workers=workers)
        if hit is not None:
            if progress:
                progress(len(table), len(table))
            return hit
        notes += [note] if note else []

    n, pid = len(table), os.getpid()
    temps = [npy.with_suffix(f".tmp{pid}.npy"), npy.with_suffix(f".tmp{pid}b.npy"),
             meta_file.with_suffix(f".tmp{pid}")]
    try:   # temporary files go on every exit path: an error, Ctrl-C, SIGTERM (a KeyboardInterrupt)
        if mapped:
            images = _open_temp(cache_dir, temps[0], (n, 3, size, size))
        else:
            images = np.empty((n, 3, size, size), dtype=np.uint8)
        kept, skipped, sizes = _decode_into(images, table, size, strict=strict, workers=workers,
                                            max_pixels=max_pixels, progress=progress)
        sub, sizes = _check_kept(table, kept, skipped), sizes[kept]
        if mapped:
            images = _finish_mapped(images, temps, npy, meta_file, kept, skipped, sizes, workers)
        else:
            images = images[kept] if len(kept) < n else images
            if use_cache:
                _write_cache(cache_dir, npy, meta_file, images, kept, skipped, sizes, workers)
    finally:
        _remove(temps)
    return DecodedImages(images, sub, skipped, npy if use_cache else None, False, notes, sizes=sizes)


def _no_room(npy: Path, e: OSError) -> OutputError:
    return OutputError(f"cannot write the on-disk image cache '{npy}' ({e.strerror or e}); free space there "
                       "or point MEMSCAN_CACHE_DIR / --cache-dir at a disk with room")


def _open_temp(cache_dir: Path, tmp: Path, shape) -> np.memmap:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    except OSError as e:
        raise _no_room(tmp, e) from None


def _finish_mapped(images, temps: list[Path], npy: Path, meta_file: Path, kept, skipped, sizes,
                   workers) -> np.memmap:
    """Compact the kept rows (chunk by chunk: never the whole array in RAM), publish the cache
    entry atomically, and map it read-only."""
    tmp_npy, tmp2, _ = temps
    try:
        if len(kept) < images.shape[0]:
            out = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8, shape=(len(kept),) + images.shape[1:])
            for s in range(0, len(kept), 4096):
                out[s:s + 4096] = images[kept[s:s + 4096]]
            out.flush()
            del images
            tmp_npy.unlink()
            images, tmp_npy = out, tmp2
        images.flush()
        meta = _entry_meta(images, kept, skipped, sizes, workers)
        del images
        os.replace(tmp_npy, npy)           # filled in place above, published whole here
        write_text_atomic(meta_file, meta)
    except (OSError, OutputError) as e:
        raise _no_room(npy, e) from None
    return np.load(npy, mmap_mode="r")


def _write_cache(cache_dir: Path, npy: Path, meta_file: Path, images, kept, skipped, sizes, workers):
    def save(tmp):
        with open(tmp, "wb") as f:
            np.save(f, images)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_atomic_with(npy, save)       # the array first: a side file never describes a missing array
        write_text_atomic(meta_file, _entry_meta(images, kept, skipped, sizes, workers))
    except (OSError, OutputError):
        pass  # a cache we cannot write only costs a re-decode next time
