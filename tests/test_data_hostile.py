"""Hostile and careless input to the data layer (issue 11): the index, the decoder and the cache
must neither hang, nor blow up memory, nor crash, nor silently train on the wrong pixels."""
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from memscan.data import cache as cache_mod
from memscan.data import index as index_mod
from memscan.data.cache import cache_key, load_images
from memscan.data.decode import decode, open_image
from memscan.data.index import load_index
from memscan.errors import ConfigError, DatasetError

COLORS = {"cat/a.bmp": (250, 0, 0), "cat/b.bmp": (200, 10, 0), "dog/c.bmp": (0, 0, 250), "dog/d.bmp": (0, 10, 200)}


def listed(t):
    """Everything the index left out, as "path (reason)": non-image files and unreadable images."""
    return t.ignored + [f"{u['path']} ({u['error']})" for u in t.unreadable]


def make_folder(root: Path, colors=COLORS, size=(6, 6)) -> Path:
    for rel, col in colors.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, col).save(root / rel)   # BMP: the byte size depends only on the image size
    return root


def png(size=(6, 6), color=(9, 9, 9)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def finishes(fn, seconds=20):
    """fn() in a daemon thread; fail (instead of hanging the suite) if it has not returned in time."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (hung?)"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def colour_of(d, rel):
    return tuple(int(v) for v in d.images[d.table.paths.index(rel)][:, 0, 0])


# --------------------------------------------------------------------------- cache integrity

def test_same_names_sizes_and_mtimes_in_two_folders_do_not_share_a_cache_entry(tmp_path):
    a = make_folder(tmp_path / "a")
    b = make_folder(tmp_path / "b", colors={k: tuple(255 - c for c in v) for k, v in COLORS.items()})
    for rel in COLORS:   # identical names, sizes and mtimes: only the folder differs
        assert (a / rel).stat().st_size == (b / rel).stat().st_size
        os.utime(b / rel, ns=((a / rel).stat().st_atime_ns, (a / rel).stat().st_mtime_ns))
    assert load_index(a).content_fingerprint() == load_index(b).content_fingerprint()
    cache = tmp_path / "cache"
    load_images(load_index(a), cache_dir=cache, workers=1)
    d = load_images(load_index(b), cache_dir=cache, workers=1)
    assert not d.from_cache
    assert colour_of(d, "cat/a.bmp") == (5, 255, 255)


def _entry(cache: Path) -> tuple[Path, Path]:
    (npy,) = cache.glob("*.npy")
    return npy, npy.with_suffix(".json")


def _garble(npy: Path, meta: Path):
    raw = bytearray(npy.read_bytes())
    raw[-7] ^= 0x5A   # one pixel byte, same length: the .npy header still parses
    npy.write_bytes(bytes(raw))


def _zero_bytes(npy: Path, meta: Path):
    npy.write_bytes(b"")


def _truncated(npy: Path, meta: Path):
    npy.write_bytes(npy.read_bytes()[:-50])


def _bad_json(npy: Path, meta: Path):
    meta.write_text('{"kept": [0, 1')


def _wrong_shape(npy: Path, meta: Path):
    np.save(npy, np.zeros((4, 3, 5, 5), np.uint8))


def _no_json(npy: Path, meta: Path):
    meta.unlink()


@pytest.mark.parametrize("mapped", [False, True], ids=["in-memory", "memory-mapped"])
@pytest.mark.parametrize("damage,why", [(_garble, "checksum mismatch"), (_zero_bytes, "empty, truncated"),
                                        (_truncated, "empty, truncated"), (_bad_json, "JSON side file"),
                                        (_wrong_shape, "wrong shape"), (_no_json, "missing")])
def test_damaged_cache_entry_is_rebuilt_with_a_note(tmp_path, mapped, damage, why):
    ds, cache = make_folder(tmp_path / "ds"), tmp_path / "cache"
    kw = {"cache_dir": cache, "workers": 1, "memory_bytes": 0 if mapped else None}
    d0 = load_images(load_index(ds), **kw)
    assert isinstance(d0.images, np.memmap) == mapped
    want = np.array(d0.images)   # a copy: a memory map would show the damage done to its file
    npy, meta = _entry(cache)
    damage(npy, meta)
    d = load_images(load_index(ds), **kw)   # a zero-byte .npy used to escape as EOFError: a silent exit 130
    assert not d.from_cache
    assert len(d.notes) == 1 and f"decode cache entry '{npy}' was damaged" in d.notes[0] and why in d.notes[0], d.notes
    assert d.notes[0].endswith("rebuilt it")
    np.testing.assert_array_equal(np.asarray(d.images), want)
    again = load_images(load_index(ds), **kw)   # the rebuilt entry is whole
    assert again.from_cache and again.notes == [] and d0.notes == []
    assert not list(cache.glob("*.tmp*"))


def test_checksums_are_stored_in_the_side_file(tmp_path):
    ds, cache = make_folder(tmp_path / "ds"), tmp_path / "cache"
    load_images(load_index(ds), cache_dir=cache, workers=1)
    m = json.loads(_entry(cache)[1].read_text())
    assert m["shape"] == [4, 3, 6, 6] and len(m["crc32"]) == 1 and all(isinstance(c, int) for c in m["crc32"])


def test_checksum_blocks_cover_every_row(monkeypatch):
    monkeypatch.setattr(cache_mod, "CHECK_BLOCK_BYTES", 100)   # 3 rows of 27 bytes per block
    a = np.arange(10 * 27, dtype=np.uint8).reshape(10, 3, 3, 3)
    sums = cache_mod._checksums(a, workers=2)
    assert len(sums) == 4 and sums == cache_mod._checksums(a, workers=1)
    b = a.copy()
    b[9, 2, 2, 2] ^= 1   # the last byte of the last (short) block
    assert cache_mod._checksums(b)[:3] == sums[:3] and cache_mod._checksums(b)[3] != sums[3]


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    ds, cache = make_folder(tmp_path / "ds"), tmp_path / "cache"
    t = load_index(ds)
    cache.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    key = cache_key(t, 6)
    stale, live = cache / f"{key}.tmp{int(dead.stdout)}.npy", cache / f"{key}.tmp{os.getpid()}b.npy"
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"x")   # this (living) process's: not touched by the sweep
    load_images(t, cache_dir=cache, workers=1, use_cache=True, image_size=6)
    assert not stale.exists()


@pytest.mark.parametrize("mapped", [False, True], ids=["in-memory", "memory-mapped"])
def test_temporary_files_removed_when_decoding_fails(tmp_path, mapped):
    ds, cache = make_folder(tmp_path / "ds"), tmp_path / "cache"
    (ds / "dog" / "zz-bad.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="zz-bad.png"):
        load_images(load_index(ds), cache_dir=cache, workers=1, strict=True, memory_bytes=0 if mapped else None)
    assert not list(cache.glob("*")) if cache.exists() else True


def test_memory_mapped_compaction_with_skipped_images(tmp_path):
    ds, cache = make_folder(tmp_path / "ds"), tmp_path / "cache"
    (ds / "cat" / "bad.png").write_bytes(b"not an image")
    ram = load_images(load_index(ds), cache_dir=tmp_path / "c1", workers=1)
    mm = load_images(load_index(ds), cache_dir=cache, workers=1, memory_bytes=0)
    assert isinstance(mm.images, np.memmap) and np.array_equal(np.asarray(mm.images), ram.images)
    assert [s["path"] for s in mm.skipped] == ["cat/bad.png"]
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]
    again = load_images(load_index(ds), cache_dir=cache, workers=1, memory_bytes=0)
    assert again.from_cache and again.skipped == mm.skipped


INTERRUPTED = textwrap.dedent("""
    import os, signal, sys, time
    from memscan.cli import _terminate
    from memscan.data import cache, load_index
    signal.signal(signal.SIGTERM, _terminate)   # what the CLI does: SIGTERM becomes KeyboardInterrupt
    # a test run started in the background by a script inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: restore it, as a terminal would have it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    def slow(data, size, **kw):
        time.sleep(120)   # a decode stuck on a slow file system
    cache.decode_sized = slow
    try:
        cache.load_images(load_index(sys.argv[1]), cache_dir=sys.argv[2], workers=2, image_size=6, memory_bytes=0)
    except KeyboardInterrupt:
        sys.exit(130)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_decoding_promptly_and_leaves_no_temporary_file(tmp_path, sig):
    ds, cache = make_folder(tmp_path / "ds"), tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(ds), str(cache)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not list(cache.glob("*.tmp*")):   # decoding has begun: the full-size temporary file exists
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=20)
        assert time.monotonic() - t0 < 10
        assert rc == 130, proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    assert not list(cache.glob("*.tmp*"))


# --------------------------------------------------------------------------- files that are not images

def test_fifo_in_a_class_folder_is_listed_not_opened(tmp_path):
    ds = make_folder(tmp_path / "ds")
    os.mkfifo(ds / "cat" / "pipe.png")
    t = finishes(lambda: load_index(ds))
    assert "cat/pipe.png (not a regular file (FIFO))" in listed(t) and "cat/pipe.png" not in t.paths
    d = finishes(lambda: load_images(t, cache_dir=tmp_path / "c", workers=2))
    assert len(d.table) == 4


def test_manifest_that_is_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "m.csv")
    with pytest.raises(DatasetError, match=r"m.csv' is not a regular file or folder \(FIFO\)"):
        finishes(lambda: load_index(tmp_path / "m.csv"))


def _manifest(tmp_path: Path, extra: str) -> Path:
    make_folder(tmp_path)
    rows = "".join(f"{rel},{rel.split('/')[0]}\n" for rel in COLORS)
    (tmp_path / "m.csv").write_text(f"path,label\n{rows}{extra},cat\n")
    return tmp_path / "m.csv"


def test_fifo_listed_in_a_manifest_is_skipped_with_the_reason(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    t = load_index(_manifest(tmp_path, "pipe.png"))
    assert "pipe.png" in t.paths
    d = finishes(lambda: load_images(t, cache_dir=tmp_path / "c", workers=2))
    assert d.skipped == [{"path": "pipe.png", "error": "not a regular file (FIFO)"}]
    with pytest.raises(DatasetError, match=r"pipe.png' \(not a regular file \(FIFO\)\)"):
        finishes(lambda: load_images(t, cache_dir=tmp_path / "c2", workers=1, strict=True))


def test_symlink_to_dev_zero_is_never_read(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    ds = make_folder(tmp_path / "ds")
    os.symlink("/dev/zero", ds / "dog" / "x.png")
    t = load_index(ds)
    assert "dog/x.png (not a regular file (character device))" in listed(t)
    os.symlink("/dev/zero", tmp_path / "x.png")
    t = load_index(_manifest(tmp_path, "x.png"))
    d = finishes(lambda: load_images(t, cache_dir=tmp_path / "c", workers=1))
    assert d.skipped == [{"path": "x.png", "error": "not a regular file (character device)"}]


def test_files_over_the_byte_limit_are_skipped_unread(tmp_path, monkeypatch):
    ds = make_folder(tmp_path / "ds")
    Image.new("RGB", (60, 60), (1, 2, 3)).save(ds / "cat" / "big.bmp")   # 10854 bytes
    monkeypatch.setattr(index_mod, "MAX_FILE_BYTES", 2000)
    d = load_images(load_index(ds), cache_dir=tmp_path / "c", workers=1, image_size=6)
    assert [s["path"] for s in d.skipped] == ["cat/big.bmp"]
    assert "over the 0 MiB limit" in d.skipped[0]["error"] or "limit for one image" in d.skipped[0]["error"]
    with pytest.raises(DatasetError, match="limit for one image"):
        index_mod.read_regular(ds / "cat" / "big.bmp", 100)


# --------------------------------------------------------------------------- pixel limits

def test_images_over_max_pixels_are_skipped_with_the_option_named(tmp_path):
    ds = make_folder(tmp_path / "ds")
    Image.new("RGB", (40, 30), (1, 2, 3)).save(ds / "dog" / "big.png")
    d = load_images(load_index(ds), cache_dir=tmp_path / "c", workers=1, image_size=6, max_pixels=1000)
    assert d.skipped == [{"path": "dog/big.png",
                          "error": "image is 40x30 pixels, over the 1,000-pixel limit; raise it with "
                                   "--max-image-pixels if the machine has the memory"}]
    d = load_images(load_index(ds), cache_dir=tmp_path / "c", workers=1, image_size=6, max_pixels=1200)
    assert not d.from_cache and d.skipped == []   # another limit, another cache entry


def test_probing_a_decompression_bomb_prints_no_raw_warning(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    code = ("from PIL import Image\nfrom memscan.data.decode import probe_size\n"
            "Image.MAX_IMAGE_PIXELS = 1000\n"   # 40x30 is then "a decompression bomb" to PIL
            f"print(probe_size({str(tmp_path / 'big.png')!r}))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "(40, 30)" and p.stderr == "", p.stderr


def test_max_pixels_checked_before_decoding(monkeypatch):
    data = png((40, 30))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded an image over the limit"))
    with pytest.raises(DatasetError, match="40x30"):
        open_image(data, max_pixels=1199)


def _jpeg(w, h) -> bytes:
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_large_jpeg_decodes_at_reduced_scale():
    data = _jpeg(2000, 1600)
    assert open_image(data).size == (2000, 1600)
    assert open_image(data, size=32).size == (250, 200)   # 1/8 scale: still over twice the target
    assert open_image(data, size=224).size == (1000, 800)   # 1/2: 1/4 would be under 448
    # judged on the pixels actually decoded: 3.2 MP on disk, 50 kP decoded
    out = decode(data, 32, max_pixels=100_000)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((40, 32), Image.Resampling.BOX))[:, 4:36]
    assert np.abs(out.transpose(1, 2, 0).astype(int) - full.astype(int)).mean() < 4
    with pytest.raises(DatasetError):
        decode(png((2000, 1600)), 32, max_pixels=100_000)


@pytest.mark.parametrize("w,h", [(1, 300_000), (300_000, 1)])
def test_extreme_aspect_ratio_resamples_only_the_output(w, h, monkeypatch):
    buf = io.BytesIO()
    Image.new("L", (w, h), 77).save(buf, "PNG")
    assert len(buf.getvalue()) < 2000
    sizes, resize = [], Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize",
                        lambda self, size, *a, **k: sizes.append(size) or resize(self, size, *a, **k))
    out = decode(buf.getvalue(), 8)   # (at 224 px the old way needed 224 x 67 million pixels: 45 GB)
    assert out.shape == (3, 8, 8) and (out == 77).all()
    assert max(a * b for a, b in sizes) <= 8 * 8


# --------------------------------------------------------------------------- error texts

def test_unidentified_image_error_has_no_object_repr(tmp_path):
    ds = make_folder(tmp_path / "ds")
    (ds / "cat" / "junk.png").write_bytes(b"definitely not an image")
    d = load_images(load_index(ds), cache_dir=tmp_path / "c", workers=1)
    (err,) = [s["error"] for s in d.skipped]
    assert "object at 0x" not in err and "cannot identify image file" in err, err


# --------------------------------------------------------------------------- hostile names

def test_file_name_that_is_not_utf8_is_listed_not_indexed(tmp_path):
    ds = make_folder(tmp_path / "ds")
    raw = os.fsencode(ds / "cat") + b"/caf\xe9.png"
    try:
        with open(raw, "wb") as f:
            f.write(png())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    t = load_index(ds)
    assert "cat/caf\\xe9.png (name is not UTF-8; rename it)" in listed(t)
    assert len(t) == 4
    for s in listed(t) + t.paths:
        s.encode("utf-8")   # Parquet, JSON and the console all need this
    load_images(t, cache_dir=tmp_path / "c", workers=1)


def test_class_folder_name_that_is_not_utf8_is_refused(tmp_path):
    ds = make_folder(tmp_path / "ds")
    try:
        os.mkdir(os.fsencode(ds) + b"/ni\xf1o")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    with pytest.raises(DatasetError, match=r"class folder 'ni\\xf1o' .* not UTF-8; rename it") as ei:
        load_index(ds)
    str(ei.value).encode("utf-8")


def test_symlink_loops_and_links_to_indexed_folders_are_visited_once(tmp_path):
    ds = make_folder(tmp_path / "ds")
    os.symlink("..", ds / "cat" / "up")            # to the dataset root
    os.symlink(".", ds / "dog" / "here")           # to itself
    (ds / "cat" / "sub").mkdir()
    os.symlink("..", ds / "cat" / "sub" / "back")  # to its class folder
    os.symlink("../../dog", ds / "cat" / "sub" / "other")   # into another class
    os.symlink("self.png", ds / "cat" / "self.png")        # a link to itself (ELOOP)
    t = finishes(lambda: load_index(ds))
    assert t.paths == sorted(COLORS)
    loops = sorted(s for s in listed(t) if "already indexed" in s)
    assert [s.split(" ")[0] for s in loops] == ["cat/sub/back", "cat/sub/other", "cat/up", "dog/here"]
    assert any(s.startswith("cat/self.png (cannot stat") for s in listed(t)), listed(t)


def test_symlinked_folder_outside_the_dataset_is_followed(tmp_path):
    ds = make_folder(tmp_path / "ds")
    Image.new("RGB", (6, 6), (7, 7, 7)).save(tmp_path / "elsewhere.bmp")
    (tmp_path / "extra").mkdir()
    Image.new("RGB", (6, 6), (7, 7, 7)).save(tmp_path / "extra" / "e.bmp")
    os.symlink(tmp_path / "extra", ds / "dog" / "extra")
    assert "dog/extra/e.bmp" in load_index(ds).paths


def test_dangling_symlink_is_listed(tmp_path):
    ds = make_folder(tmp_path / "ds")
    os.symlink(tmp_path / "nowhere.png", ds / "cat" / "gone.png")
    t = load_index(ds)
    assert "cat/gone.png (broken symlink)" in listed(t) and "cat/gone.png" not in t.paths
    load_images(t, cache_dir=tmp_path / "c", workers=1)


def test_paths_over_path_max_are_listed(tmp_path):
    ds = make_folder(tmp_path / "ds")
    name = "d" * 250
    fd = os.open(ds / "cat", os.O_RDONLY)
    try:
        for _ in range(18):   # 18 x 251 bytes: past PATH_MAX (4096); built relative to a folder descriptor
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
        f = os.open("deep.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
        os.write(f, png())
        os.close(f)
    finally:
        os.close(fd)
    t = load_index(ds)
    assert len(t) == 4
    (deep,) = [s for s in listed(t) if "longer than the system limit" in s]
    assert deep.startswith("cat/" + name) and len(os.fsencode(str(ds / deep.split(" ")[0]))) >= 4096


# --------------------------------------------------------------------------- manifests

def _latin1_manifest(tmp_path: Path) -> Path:
    for n in ("a", "b", "c"):
        (tmp_path / f"{n}.png").write_bytes(png())
    m = tmp_path / "m.csv"
    m.write_bytes("path,label\na.png,tea\nb.png,café\nc.png,tea\n".encode("latin-1"))
    return m


def test_manifest_that_is_not_utf8_is_refused_with_the_fix(tmp_path):
    m = _latin1_manifest(tmp_path)
    with pytest.raises(DatasetError) as ei:
        load_index(m)
    assert str(ei.value) == (f"manifest '{m}' is not UTF-8 (byte 0xe9 on line 3); pass --encoding latin-1 "
                             "(or the file's encoding)")


def test_manifest_header_that_is_not_utf8_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    m = tmp_path / "m.csv"
    m.write_bytes("path,labél\na.png,x\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="byte 0xe9 on line 1"):
        load_index(m)


def test_manifest_encoding_option(tmp_path):
    m = _latin1_manifest(tmp_path)
    t = load_index(m, encoding="latin-1")
    assert t.class_names == ["café", "tea"] and t.labels.tolist() == [1, 0, 1]
    with pytest.raises(ConfigError, match="'klingon' is not a known text encoding"):
        load_index(m, encoding="klingon")


def test_manifest_row_numbers_csv_lines_and_parquet_rows(tmp_path):
    for n in "abc":
        (tmp_path / f"{n}.png").write_bytes(png())
    (tmp_path / "m.csv").write_text("path,label\na.png,x\nb.png,\nc.png,y\n")
    with pytest.raises(DatasetError, match="line 3 has no label"):
        load_index(tmp_path / "m.csv")
    pq.write_table(pa.table({"path": ["a.png", "b.png", "c.png"], "label": ["x", None, "y"]}), tmp_path / "m.parquet")
    with pytest.raises(DatasetError, match="row 2 has no label"):
        load_index(tmp_path / "m.parquet")
    pq.write_table(pa.table({"image": pa.array([png(), None, png()], pa.binary()), "label": [0, 1, 1]}),
                   tmp_path / "b.parquet")
    with pytest.raises(DatasetError, match="row 2 has no image bytes"):
        load_index(tmp_path / "b.parquet")
