"""Image properties measured on the decoded pixels, and the rules that name an image's issues.

Pure numpy, arrays in and out. ``properties`` reads the uint8 [N, 3, S, S] array the decode step
already made (the training size, what the network sees: no image is decoded again) and each
image's own width and height recorded while decoding. ``find_issues`` names the issues:

| issue | rule | why |
| --- | --- | --- |
| ``dark`` | brightness < 0.15 and under a quarter of the set's median | pixel levels are absolute, so a floor says "dark"; the relative bound keeps a dark set (MNIST's black background: median 0.13) from being flagged throughout |
| ``bright`` | brightness > 0.85 and its distance to white under a quarter of the median's | washed out / overexposed |
| ``low_contrast`` | contrast < 0.04 and under a quarter of the set's median | nearly one tone: fog, a lens cap, a failed exposure |
| ``blurry`` | sharpness a low outlier (log scale) and under a tenth of the set's median | sharpness depends on the content and the resizing, so only the set's own distribution can say "blurry" (a blank, dark, washed-out or flat image is not also called blurry or grayscale: too little of it shows) |
| ``low_information`` | entropy < 3 bits, under half the set's median, and a low outlier | blank or nearly blank (one tone with sensor noise has ~2.3 bits); MNIST's digits have 1.7 bits, so only an outlier counts |
| ``grayscale`` | colourfulness < 2/255 in a set where at least 90% of the images are colour | a grayscale image among colour ones (a grayscale set flags none) |
| ``odd_size`` | own pixel count over 4x or under 1/4 of the set's median, and an outlier | a thumbnail or a scan among photos |
| ``odd_aspect`` | own aspect ratio over 2x or under 1/2 of the set's median, and an outlier | a panorama or a strip, mostly cropped away by the centre crop |

"Outlier" is a robust z-score beyond 3.5: (x - median) / (1.4826 MAD), the median absolute deviation
scaled to a normal's standard deviation (Iglewicz & Hoaglin's cut). Every rule pairs a fixed bound with
one relative to the set, so that a tight distribution (a MAD near zero) does not flag tiny differences
and a set that is dark (or small, or blurry) throughout is not flagged by an absolute bound alone. The thresholds
were chosen on planted cases and CIFAR-10 / MNIST as shipped (BENCHMARKS.md §16).
"""
from __future__ import annotations

import numpy as np

ISSUES = ("dark", "bright", "low_contrast", "blurry", "low_information", "grayscale", "odd_size", "odd_aspect")
PROPERTY_COLUMNS = ("brightness", "contrast", "sharpness", "entropy", "colourfulness", "width", "height")
OUTLIER_Z = 3.5
DARK, BRIGHT, LOW_CONTRAST = 0.15, 0.85, 0.04
RELATIVE = 0.25              # dark, bright, low contrast: also beyond this share of the set's median
BLUR_FRACTION = 0.1          # sharpness under this fraction of the median (and an outlier)
LOW_ENTROPY_BITS = 3.0
GRAY_LEVELS = 2 / 255        # colourfulness below: grayscale
COLOUR_SET = 0.9             # share of colour images that makes a grayscale one an issue
SIZE_FACTOR, ASPECT_FACTOR = 4.0, 2.0
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def properties(images: np.ndarray, sizes: np.ndarray | None = None, *, chunk: int | None = None) -> dict[str, np.ndarray]:
    """Per image, all in [0, 1] unless said: ``brightness`` (mean luma), ``contrast`` (luma standard
    deviation), ``sharpness`` (variance of the luma's 4-neighbour Laplacian, in (1/255)^2 units; higher =
    sharper), ``entropy`` (bits of the 256-level luma histogram, 0-8; lower = less information),
    ``colourfulness`` (mean over pixels of max - min channel), ``width``/``height`` (the file's own
    pixels; 0 when unknown). ``images``: uint8 [N, 3, S, S], read ``chunk`` rows at a time (default: 64 MiB
    as float32, so 224-px photos do not take gigabytes; a memory map stays on disk)."""
    n = len(images)
    chunk = chunk or chunk_rows(images)
    out = {k: np.zeros(n, dtype=np.float32) for k in PROPERTY_COLUMNS[:5]}
    for s in range(0, n, chunk):
        x = np.asarray(images[s:s + chunk])
        y = np.tensordot(_LUMA, x.astype(np.float32), axes=([0], [1]))           # [c, S, S], 0-255
        flat = y.reshape(len(x), -1)
        out["brightness"][s:s + len(x)] = flat.mean(1) / 255
        out["contrast"][s:s + len(x)] = flat.std(1) / 255
        lap = (y[:, 1:-1, :-2] + y[:, 1:-1, 2:] + y[:, :-2, 1:-1] + y[:, 2:, 1:-1] - 4 * y[:, 1:-1, 1:-1])
        if lap.size:   # images of 2 px or less have no Laplacian: sharpness 0
            out["sharpness"][s:s + len(x)] = lap.reshape(len(x), -1).var(1)
        out["entropy"][s:s + len(x)] = _entropy(np.clip(flat + 0.5, 0, 255).astype(np.int64))
        out["colourfulness"][s:s + len(x)] = (x.max(1).astype(np.int16) - x.min(1)).reshape(len(x), -1).mean(1) / 255
    sizes = np.zeros((n, 2), dtype=np.int32) if sizes is None else np.asarray(sizes, dtype=np.int32)
    out["width"], out["height"] = sizes[:, 0].copy(), sizes[:, 1].copy()
    return out


def chunk_rows(images: np.ndarray, budget: int = 64 * 2 ** 20) -> int:
    """Rows of ``images`` whose float32 copy fits in ``budget`` bytes."""
    return max(1, budget // (4 * int(np.prod(images.shape[1:])) or 1))


def _entropy(levels: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits of each row's histogram of 256 levels."""
    rows, m = levels.shape
    counts = np.bincount((levels + 256 * np.arange(rows)[:, None]).ravel(), minlength=256 * rows).reshape(rows, 256)
    p = counts / m
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log2(p), 0.0).sum(1)


def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD); where the MAD is 0, +-inf for any other value and 0 for the median."""
    x = np.asarray(x, dtype=np.float64)
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (x - med) / mad
    return np.nan_to_num(z, nan=0.0)


def find_issues(props: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{issue: bool [N]}`` for every name in ``ISSUES`` (rules in the module docstring)."""
    b, c = props["brightness"], props["contrast"]
    sharp = np.log(props["sharpness"].astype(np.float64) + 1e-3)
    colour = props["colourfulness"] >= GRAY_LEVELS
    out = {
        "dark": (b < DARK) & (b < RELATIVE * np.median(b)),
        "bright": (b > BRIGHT) & (1 - b < RELATIVE * (1 - np.median(b))),
        "low_contrast": (c < LOW_CONTRAST) & (c < RELATIVE * np.median(c)),
        "blurry": (robust_z(sharp) < -OUTLIER_Z) & (sharp < np.median(sharp) + np.log(BLUR_FRACTION)),
        "low_information": ((props["entropy"] < LOW_ENTROPY_BITS) & (props["entropy"] < np.median(props["entropy"]) / 2)
                            & (robust_z(props["entropy"]) < -OUTLIER_Z)),
        "grayscale": ~colour & (colour.mean() >= COLOUR_SET),
    }
    # blur and colour describe a picture: a blank image shows none, and a dark, washed-out or flat one too
    # little to judge them (its Laplacian and channel spread shrink with its contrast)
    unseen = out["low_information"] | out["dark"] | out["bright"] | out["low_contrast"]
    for name in ("blurry", "grayscale"):
        out[name] &= ~unseen
    w, h = props["width"].astype(np.float64), props["height"].astype(np.float64)
    known = (w > 0) & (h > 0)
    out["odd_size"] = np.zeros(len(b), dtype=bool)
    out["odd_aspect"] = np.zeros(len(b), dtype=bool)
    if known.any():
        area, aspect = np.log(np.where(known, w * h, 1)), np.log(np.where(known, w / np.maximum(h, 1), 1))
        for name, v, factor in (("odd_size", area, SIZE_FACTOR), ("odd_aspect", aspect, ASPECT_FACTOR)):
            z = np.zeros(len(v))
            z[known] = robust_z(v[known])
            far = np.abs(v - np.median(v[known])) > np.log(factor)
            out[name] = known & far & (np.abs(z) > OUTLIER_Z)
    return out


def issue_names(flags: dict[str, np.ndarray]) -> np.ndarray:
    """One string per image: its issues joined by ',' in ``ISSUES`` order, '' when none."""
    n = len(next(iter(flags.values())))
    names = np.full(n, "", dtype=object)
    for issue in ISSUES:
        hit = flags[issue]
        names[hit] = [f"{a},{issue}" if a else issue for a in names[hit]]
    return names
