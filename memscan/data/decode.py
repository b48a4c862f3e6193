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

Image.MAX_IMAGE_PIXELS = 20_000 * 20_000  # large but finite: a bomb still fails, as an unreadable image


def open_image(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.open(io.BytesIO(data))
        img.seek(0)  # GIF/TIFF: first frame
        img.load()
    return img


def probe_size(data_or_path) -> tuple[int, int]:
    """(width, height) after EXIF rotation, reading only the header."""
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) else data_or_path
    with Image.open(src) as img:
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
    """Resize the shorter side to ``size`` then center-crop to a square (no distortion)."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None if scale > 0.5 else 2.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode(data: bytes, size: int) -> np.ndarray:
    """Bytes of one image -> uint8 array [3, size, size]."""
    img = resize_center(to_rgb(open_image(data)), size)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
