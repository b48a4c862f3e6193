import io
import os

import numpy as np
import pytest
from PIL import Image

from memscan.data.cache import load_images
from memscan.data.decode import decode, open_image, probe_size, resize_center, to_rgb
from memscan.data.index import load_index
from memscan.errors import DatasetError

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def quadrants(n=16) -> np.ndarray:
    """n x n RGB: red, green / blue, yellow quadrants (HWC uint8)."""
    a = np.zeros((n, n, 3), np.uint8)
    h = n // 2
    a[:h, :h], a[:h, h:], a[h:, :h], a[h:, h:] = RED, GREEN, BLUE, YELLOW
    return a


def chw(a_hwc) -> np.ndarray:
    return np.asarray(a_hwc, np.uint8).transpose(2, 0, 1)


# --------------------------------------------------------------------------- decode: formats

LOSSLESS = {
    "PNG": {},
    "BMP": {},
    "TIFF": {},
    "WEBP": {"lossless": True},
    "GIF": {},   # 4 colours fit a palette exactly
}


@pytest.mark.parametrize("fmt", sorted(LOSSLESS))
def test_lossless_formats_decode_exactly(fmt):
    ref = quadrants(16)
    out = decode(enc(Image.fromarray(ref), fmt, **LOSSLESS[fmt]), 16)
    assert out.dtype == np.uint8 and out.shape == (3, 16, 16)
    np.testing.assert_array_equal(out, chw(ref))


def test_all_formats_agree_after_resize():
    ref = Image.fromarray(quadrants(16))
    outs = {fmt: decode(enc(ref, fmt, **kw), 8) for fmt, kw in LOSSLESS.items()}
    first = outs.pop("PNG")
    assert first.shape == (3, 8, 8)
    for fmt, o in outs.items():
        np.testing.assert_array_equal(o, first, err_msg=fmt)
    jpg = decode(enc(ref, "JPEG", quality=95, subsampling=0), 8).astype(int)
    assert np.abs(jpg - first.astype(int)).max() <= 12


def test_jpeg_close_to_source():
    ref = quadrants(16)
    out = decode(enc(Image.fromarray(ref), "JPEG", quality=95, subsampling=0), 16)
    assert out.shape == (3, 16, 16) and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - chw(ref).astype(int))
    assert diff.mean() < 3 and diff.max() <= 20


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (4, 4), RED), Image.new("RGB", (4, 4), BLUE), Image.new("RGB", (4, 4), GREEN)]
    data = enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = decode(data, 4)
    assert (out.reshape(3, -1).T == RED).all()


# --------------------------------------------------------------------------- decode: modes

def test_grayscale_L_becomes_equal_rgb_channels():
    a = np.array([[0, 50], [128, 255]], np.uint8)
    out = decode(enc(Image.fromarray(a, "L"), "PNG"), 2)
    assert out.shape == (3, 2, 2)
    for c in range(3):
        np.testing.assert_array_equal(out[c], a)


def _palette_image(transparent: bool) -> bytes:
    img = Image.new("P", (2, 2))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    img.putdata([0, 1, 1, 0])
    assert img.mode == "P"
    return enc(img, "PNG", **({"transparency": 0} if transparent else {}))


def test_palette_without_transparency():
    out = decode(_palette_image(False), 2)
    assert out[:, 0, 0].tolist() == [10, 20, 30]
    assert out[:, 0, 1].tolist() == [200, 100, 50]
    assert out[:, 1, 1].tolist() == [10, 20, 30]


def test_palette_with_transparency_composites_on_white():
    assert "transparency" in Image.open(io.BytesIO(_palette_image(True))).info
    out = decode(_palette_image(True), 2)
    assert out[:, 0, 0].tolist() == [255, 255, 255]   # palette index 0 is transparent
    assert out[:, 0, 1].tolist() == [200, 100, 50]
    assert out[:, 1, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("mode,key,other", [("RGB", (10, 20, 30), (200, 100, 50)), ("L", 7, 99)])
def test_colour_key_transparency_becomes_white(mode, key, other):
    img = Image.new(mode, (2, 2), key)
    img.putpixel((1, 0), other)
    img.putpixel((1, 1), other)
    data = enc(img, "PNG", transparency=key)
    assert Image.open(io.BytesIO(data)).info["transparency"] == key
    out = decode(data, 2)
    assert out[:, :, 0].tolist() == [[255, 255]] * 3               # keyed colour is transparent -> white
    want = other if isinstance(other, tuple) else (other,) * 3
    assert [out[c, 0, 1] for c in range(3)] == list(want)


def test_rgba_transparent_pixel_becomes_white():
    a = np.zeros((2, 2, 4), np.uint8)
    a[0, 0] = (10, 20, 30, 0)        # fully transparent -> white
    a[0, 1] = (200, 100, 50, 255)    # opaque -> unchanged
    a[1, 0] = (255, 0, 0, 128)       # half transparent red over white
    a[1, 1] = (0, 0, 0, 255)
    out = decode(enc(Image.fromarray(a, "RGBA"), "PNG"), 2)
    assert out[:, 0, 0].tolist() == [255, 255, 255]
    assert out[:, 0, 1].tolist() == [200, 100, 50]
    r, g, b = out[:, 1, 0].tolist()
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1
    assert out[:, 1, 1].tolist() == [0, 0, 0]


def test_la_transparent_pixel_becomes_white():
    img = Image.new("LA", (2, 2))
    img.putdata([(40, 0), (40, 255), (40, 0), (40, 255)])
    out = decode(enc(img, "PNG"), 2)
    assert out[:, :, 0].tolist() == [[255, 255]] * 3      # left column transparent -> white
    assert out[:, :, 1].tolist() == [[40, 40]] * 3        # right column opaque grey


def test_16bit_png_scaled_by_bit_depth():
    a = np.array([[0, 32768], [65535, 100]], np.uint16)
    data = enc(Image.fromarray(a), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode(data, 2)
    assert out.dtype == np.uint8
    assert out[0].tolist() == [[0, 128], [255, 0]]
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


def test_dark_16bit_png_is_not_stretched():
    # all values <= 255 in a 16-bit image are very dark; they must not be read as 8-bit values
    a = np.array([[0, 200], [255, 100]], np.uint16)
    out = decode(enc(Image.fromarray(a), "PNG"), 2)
    assert out.max() <= 1


def test_cmyk_jpeg_to_rgb():
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))   # pure red in CMYK
    data = enc(img, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode(data, 8).astype(int)
    assert np.abs(out - np.array(RED)[:, None, None]).max() <= 6


def _exif_rotated_jpeg() -> bytes:
    # stored 4 wide x 2 high, black with one white pixel at x=3, y=0; EXIF orientation 6 = rotate 90 cw
    a = np.zeros((2, 4, 3), np.uint8)
    a[0, 3] = 255
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    return enc(img, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())


def test_exif_orientation_applied_before_resize():
    data = _exif_rotated_jpeg()
    assert Image.open(io.BytesIO(data)).size == (4, 2)
    assert probe_size(data) == (2, 4)
    upright = np.asarray(to_rgb(open_image(data)))
    assert upright.shape == (4, 2, 3)            # 2 wide x 4 high
    # rotating 90 degrees clockwise sends stored (x=3, y=0) to (x=1, y=3): the bottom-right pixel
    bright = np.argwhere(upright[:, :, 0] > 128)
    assert bright.tolist() == [[3, 1]]
    assert upright[3, 1].min() >= 240


def test_exif_orientation_halves_after_resize():
    # stored 4x2: left half red, right half blue -> upright 2x4: top half red, bottom half blue
    a = np.zeros((2, 4, 3), np.uint8)
    a[:, :2], a[:, 2:] = RED, BLUE
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    out = decode(enc(img, "JPEG", quality=100, subsampling=0, exif=exif.tobytes()), 4).astype(int)
    assert out.shape == (3, 4, 4)
    assert (out[0, 0] > 240).all() and (out[2, 0] < 15).all()     # top row red
    assert (out[0, 3] < 15).all() and (out[2, 3] > 240).all()     # bottom row blue


# --------------------------------------------------------------------------- decode: geometry

def _stripes(w, h, axis):
    """Stripes along ``axis`` ('x' or 'y'): first quarter red, middle half green, last quarter blue."""
    a = np.zeros((h, w, 3), np.uint8)
    n = w if axis == "x" else h
    for col, sl in ((RED, slice(0, n // 4)), (GREEN, slice(n // 4, 3 * n // 4)), (BLUE, slice(3 * n // 4, n))):
        if axis == "x":
            a[:, sl] = col
        else:
            a[sl, :] = col
    return a


@pytest.mark.parametrize("w,h,axis", [(30, 10, "x"), (10, 30, "y")])
def test_center_crop_keeps_the_middle_at_native_short_side(w, h, axis):
    out = decode(enc(Image.fromarray(_stripes(w, h, axis)), "PNG"), 10)
    assert out.shape == (3, 10, 10)
    assert (out.reshape(3, -1).T == GREEN).all()


@pytest.mark.parametrize("w,h,axis", [(60, 20, "x"), (20, 60, "y")])
def test_resize_shorter_side_then_center_crop(w, h, axis):
    out = decode(enc(Image.fromarray(_stripes(w, h, axis)), "PNG"), 5)
    assert out.shape == (3, 5, 5)
    assert (out.reshape(3, -1).T == GREEN).all()


def test_resize_center_output_sizes():
    for (w, h) in [(7, 3), (3, 7), (100, 99), (5, 5), (1, 40)]:
        assert resize_center(Image.new("RGB", (w, h)), 6).size == (6, 6)


def test_upscale_of_tiny_image():
    out = decode(enc(Image.new("RGB", (2, 2), (12, 34, 56)), "PNG"), 9)
    assert out.shape == (3, 9, 9)
    assert (out.reshape(3, -1).T == (12, 34, 56)).all()


# --------------------------------------------------------------------------- load_images

COLORS = {"cat/a.png": (250, 0, 0), "cat/b.png": (200, 10, 0), "cat/sub/c.png": (150, 20, 0),
          "dog/d.png": (0, 0, 250), "dog/e.png": (0, 10, 200)}


def make_folder(root, size=(6, 6), colors=COLORS):
    for rel, col in colors.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, col).save(p)
    return root


def snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def test_load_images_native_size_cache_and_no_writes_in_dataset(tmp_path):
    ds = make_folder(tmp_path / "ds")
    cache = tmp_path / "cache"
    before = snapshot(ds)
    t = load_index(ds)
    seen = []
    d1 = load_images(t, cache_dir=cache, workers=2, default_size=4, progress=lambda a, b: seen.append((a, b)))
    assert not d1.from_cache and d1.skipped == []
    assert d1.images.shape == (5, 3, 6, 6) and d1.images.dtype == np.uint8   # native 6px, not default 4
    for i, rel in enumerate(d1.table.paths):
        assert (d1.images[i].reshape(3, -1).T == COLORS[rel]).all(), rel
    assert d1.table.labels.tolist() == [0, 0, 0, 1, 1]
    assert seen[-1] == (5, 5)
    assert d1.cache_file is not None and d1.cache_file.parent == cache and d1.cache_file.exists()

    d2 = load_images(load_index(ds), cache_dir=cache, workers=2, default_size=4)
    assert d2.from_cache
    assert d2.cache_file == d1.cache_file
    np.testing.assert_array_equal(d2.images, d1.images)
    assert d2.table.paths == d1.table.paths and d2.table.labels.tolist() == d1.table.labels.tolist()

    assert snapshot(ds) == before
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]


def test_cache_not_reused_after_a_file_changes(tmp_path):
    ds = make_folder(tmp_path / "ds")
    cache = tmp_path / "cache"
    load_images(load_index(ds), cache_dir=cache, workers=1)
    Image.new("RGB", (6, 6), (1, 2, 3)).save(ds / "dog" / "e.png", "BMP")   # different bytes and size
    d = load_images(load_index(ds), cache_dir=cache, workers=1)
    assert not d.from_cache
    assert (d.images[d.table.paths.index("dog/e.png")].reshape(3, -1).T == (1, 2, 3)).all()


def test_use_cache_false_writes_nothing(tmp_path):
    ds = make_folder(tmp_path / "ds")
    d = load_images(load_index(ds), cache_dir=tmp_path / "cache", workers=1, use_cache=False)
    assert d.cache_file is None and not d.from_cache
    assert not (tmp_path / "cache").exists()


def test_mixed_sizes_use_default_size(tmp_path):
    ds = make_folder(tmp_path / "ds")
    Image.new("RGB", (10, 7), (9, 9, 9)).save(ds / "dog" / "f.png")
    d = load_images(load_index(ds), cache_dir=tmp_path / "c", workers=1, default_size=4)
    assert d.images.shape == (6, 3, 4, 4)
    d = load_images(load_index(ds), cache_dir=tmp_path / "c", workers=1, image_size=3)
    assert d.images.shape == (6, 3, 3, 3)


def test_non_square_uniform_size_uses_default(tmp_path):
    ds = make_folder(tmp_path / "ds", size=(8, 6))
    d = load_images(load_index(ds), cache_dir=tmp_path / "c", workers=1, default_size=5)
    assert d.images.shape == (5, 3, 5, 5)


def _add_broken(ds):
    (ds / "cat" / "garbage.png").write_bytes(b"definitely not an image")
    noise = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)   # same size as the rest
    full = enc(Image.fromarray(noise), "PNG")
    (ds / "dog" / "truncated.png").write_bytes(full[: len(full) // 2])


def test_corrupt_and_truncated_images_skipped(tmp_path):
    ds = make_folder(tmp_path / "ds")
    _add_broken(ds)
    t = load_index(ds)
    assert len(t) == 7
    d = load_images(t, cache_dir=tmp_path / "c", workers=2)
    assert sorted(s["path"] for s in d.skipped) == ["cat/garbage.png", "dog/truncated.png"]
    assert all(isinstance(s["error"], str) and s["error"] for s in d.skipped)
    assert d.images.shape == (5, 3, 6, 6)
    assert d.table.paths == sorted(COLORS)
    for i, rel in enumerate(d.table.paths):
        assert (d.images[i].reshape(3, -1).T == COLORS[rel]).all(), rel
    assert d.table.labels.tolist() == [0, 0, 0, 1, 1]
    # the cached result remembers what was skipped
    d2 = load_images(load_index(ds), cache_dir=tmp_path / "c", workers=2)
    assert d2.from_cache and d2.skipped == d.skipped and d2.table.paths == d.table.paths


@pytest.mark.parametrize("cached_first", [False, True])
def test_strict_raises_naming_the_file(tmp_path, cached_first):
    ds = make_folder(tmp_path / "ds")
    (ds / "cat" / "garbage.png").write_bytes(b"definitely not an image")
    if cached_first:   # a lenient run cached its result; strict must still refuse
        load_images(load_index(ds), cache_dir=tmp_path / "c", workers=1)
    with pytest.raises(DatasetError) as ei:
        load_images(load_index(ds), cache_dir=tmp_path / "c", workers=1, strict=True)
    assert str(ds / "cat" / "garbage.png") in str(ei.value)


def test_all_unreadable_raises(tmp_path):
    ds = tmp_path / "ds"
    for rel in ("a/x.png", "b/y.png"):
        (ds / rel).parent.mkdir(parents=True, exist_ok=True)
        (ds / rel).write_bytes(b"nope")
    with pytest.raises(DatasetError, match="none of the 2 images"):
        load_images(load_index(ds), cache_dir=tmp_path / "c", workers=1)


def test_only_one_readable_class_raises(tmp_path):
    ds = make_folder(tmp_path / "ds", colors={"a/x.png": RED, "a/y.png": RED})
    (ds / "b").mkdir()
    (ds / "b" / "z.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="only one class"):
        load_images(load_index(ds), cache_dir=tmp_path / "c", workers=1)


def test_parquet_bytes_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    imgs = [enc(Image.new("RGB", (4, 4), c), "PNG") for c in (RED, GREEN, BLUE)] + [b"junk"]
    pq.write_table(pa.table({"image": pa.array(imgs, pa.binary()), "label": [0, 1, 1, 0]}), tmp_path / "d.parquet")
    before = snapshot(tmp_path)
    d = load_images(load_index(tmp_path / "d.parquet"), cache_dir=tmp_path / "c", workers=1)
    assert d.images.shape == (3, 3, 4, 4)
    assert [tuple(d.images[i][:, 0, 0]) for i in range(3)] == [RED, GREEN, BLUE]
    assert d.skipped[0]["path"] == "row-3"
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("c")}
    assert after == before
