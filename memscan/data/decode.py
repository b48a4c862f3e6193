"""Decode one image into RGB uint8 of a fixed size, the same way whatever its format.

Formats: whatever Pillow reads (JPEG, PNG, BMP, WebP, TIFF, GIF's first frame, ...). Modes are
made consistent: EXIF orientation applied; grayscale, palette and CMYK to RGB; 16-bit and
32-bit integer images scaled to 8 bits by their bit depth; transparency composited on white.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..errors import DatasetError

# Pillow's own bomb check stays behind ``max_pixels`` as an absolute ceiling (it refuses twice this)
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000
# 40 megapixels (120 MB as RGB, a 16-bit one ~1 GB while scaled) can be decoded by every worker thread at
# once; a 21000x21000 PNG under Pillow's limit took 2.7 GB. JPEGs are judged after ``draft`` shrinks them.
DEFAULT_MAX_PIXELS = 40_000_000

# PIL warns (raw, on stderr) about images over its own pixel limit while only reading their header; memscan
# skips and lists every image over ``max_pixels`` itself. Set once here: ``warnings.catch_warnings`` in the
# decode threads is not thread-safe
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def open_image(data: bytes, *, size: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode the first frame of an image.

    ``size`` (the target size) lets a JPEG decode at 1/2, 1/4 or 1/8 scale (DCT scaling, ``draft``)
    while staying at least twice the target, so resizing loses nothing: far less memory and time
    for photos. An image of more than ``max_pixels`` (default ``DEFAULT_MAX_PIXELS``), judged from
    its header, raises ``DatasetError`` before any pixel is decoded.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.open(io.BytesIO(data))
        img.seek(0)  # GIF/TIFF: first frame
        img.memscan_size = img.size   # before ``draft`` shrinks a JPEG: the file's own size (image_issues)
        if size is not None:
            img.draft(None, (2 * size, 2 * size))   # a no-op for formats other than JPEG
        w, h = img.size
        if w * h > limit:
            raise DatasetError(f"image is {w}x{h} pixels, over the {limit:,}-pixel limit; raise it with "
                               "--max-image-pixels if the machine has the memory")
        img.load()
    return img


def probe_size(data_or_path) -> tuple[int, int]:
    """(width, height) after EXIF rotation, reading only the header."""
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) else data_or_path
    with Image.open(src) as img:   # DecompressionBombWarning: filtered at import (below)
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        if mode == "I" and a.max() > 65535:
            top = float(2 ** 32 - 1)
        a = np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode in ("P", "L", "RGB") and "transparency" in img.info:  # palette index or colour key (tRNS)
        img = img.convert("RGBA")
        mode = img.mode
    elif mode == "P":
        img = img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def resize_center(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` then center-crop to a square (no distortion).

    Only the central square is resampled (``box``, in source pixels): the same pixels as resizing the
    whole image then cropping, but a 1x300000 strip no longer becomes a 224x67-million image first.
    """
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    # what resize(reducing_gap=2) does when shrinking, but on the whole image: its block grid, so its pixels
    fx, fy = (int(w / nw / 2) or 1, int(h / nh / 2) or 1) if scale <= 0.5 else (1, 1)
    if (fx, fy) != (1, 1):
        img = img.reduce((fx, fy))
    box = (left * w / nw / fx, top * h / nh / fy, (left + size) * w / nw / fx, (top + size) * h / nh / fy)
    return img.resize((size, size), Image.Resampling.BILINEAR, box=box)


def decode(data: bytes, size: int, *, max_pixels: int | None = None) -> np.ndarray:
    """Bytes of one image -> uint8 array [3, size, size]. Over ``max_pixels``: ``DatasetError``."""
    return decode_sized(data, size, max_pixels=max_pixels)[0]


def decode_sized(data: bytes, size: int, *, max_pixels: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """``decode`` and the image's own (width, height) as displayed (after EXIF rotation)."""
    img = open_image(data, size=size, max_pixels=max_pixels)
    w, h = img.memscan_size
    rgb = to_rgb(img)
    if rgb.size != img.size:   # EXIF turned it by 90 degrees
        w, h = h, w
    return np.asarray(resize_center(rgb, size), dtype=np.uint8).transpose(2, 0, 1), (w, h)
