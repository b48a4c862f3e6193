"""image_issues: properties measured exactly, and each rule flags its planted case and nothing else."""
import numpy as np
import pytest

from memscan.image_issues import ISSUES, find_issues, issue_names, properties, robust_z


def _textured(n, size=32, seed=0):
    """Colour images with smooth structure and varied brightness (a stand-in for photos)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    for i in range(n):
        f = rng.uniform(1, 4, size=(3, 2))
        ph = rng.uniform(0, 6.3, size=3)
        base = rng.uniform(0.35, 0.65)
        for c in range(3):
            wave = np.sin(2 * np.pi * (f[c, 0] * xx + f[c, 1] * yy) + ph[c])
            noise = rng.normal(0, 0.06, size=(size, size))
            out[i, c] = np.clip(255 * (base + 0.25 * wave + noise), 0, 255).astype(np.uint8)
    return out


def test_properties_measure_what_they_say():
    flat = np.full((1, 3, 8, 8), 51, dtype=np.uint8)                # 0.2 grey, no structure
    halves = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    halves[:, :, :, 4:] = 255                                        # half black, half white
    colour = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    colour[:, 0] = 200                                               # pure red
    p = properties(np.concatenate([flat, halves, colour]), np.array([[8, 8], [640, 480], [0, 0]]))
    assert p["brightness"][0] == pytest.approx(0.2, abs=1e-6)
    assert p["contrast"][0] == 0 and p["sharpness"][0] == 0 and p["entropy"][0] == 0
    assert p["brightness"][1] == pytest.approx(0.5, abs=1e-6) and p["contrast"][1] == pytest.approx(0.5, abs=1e-6)
    assert p["entropy"][1] == pytest.approx(1.0)                    # two equally common levels: one bit
    assert p["sharpness"][1] > 0                                     # the edge
    assert p["colourfulness"][0] == 0 and p["colourfulness"][2] == pytest.approx(200 / 255, abs=1e-6)
    assert p["width"].tolist() == [8, 640, 0] and p["height"].tolist() == [8, 480, 0]


def test_chunked_properties_equal_one_pass():
    x = _textured(50)
    a, b = properties(x, chunk=7), properties(x, chunk=1000)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5)


def test_each_planted_issue_is_found_and_nothing_else():
    x = _textured(300)
    sizes = np.tile([32, 32], (300, 1))
    x[0] = (x[0] * 0.1).astype(np.uint8)                                                  # dark
    x[1] = 255 - ((255 - x[1].astype(np.int16)) * 0.1).astype(np.uint8)                   # washed out
    x[2] = 128                                                                              # blank
    g = x[3].mean(0).astype(np.uint8)
    x[3] = g                                                                                # grayscale
    k = np.ones(5) / 5                                                                     # blurred (box 5x5)
    b = x[4].astype(np.float64)
    for axis in (1, 2):
        b = np.apply_along_axis(lambda r: np.convolve(np.pad(r, 2, mode="edge"), k, "valid"), axis, b)
    x[4] = b.round().astype(np.uint8)
    sizes[5] = [320, 320]                                                                   # odd size (100x the area)
    sizes[6] = [96, 24]                                                                     # odd aspect (4:1)
    flags = find_issues(properties(x, sizes))
    want = {0: "dark", 1: "bright", 2: "low_information", 3: "grayscale", 4: "blurry", 5: "odd_size", 6: "odd_aspect"}
    for i, issue in want.items():
        assert flags[issue][i], (i, issue)
    assert flags["low_contrast"][2]                                   # the blank one is flat too
    flagged = set(np.flatnonzero(np.any([flags[k] for k in ISSUES], axis=0)).tolist())
    assert flagged == set(want)                                       # no false alarm among the 293 others
    names = issue_names(flags)
    assert names[2] == "low_contrast,low_information" and names[10] == ""


def test_rules_are_relative_to_the_set():
    """A grayscale set flags no grayscale image; a set with a black background (MNIST) is not all dark;
    equal sizes give no odd_size even though the MAD is zero."""
    rng = np.random.default_rng(1)
    digits = np.zeros((200, 3, 28, 28), dtype=np.uint8)
    for i in range(200):   # a white stroke on black, like MNIST (mean ~0.13)
        r, c = rng.integers(4, 20, size=2)
        digits[i, :, r:r + 8, c:c + 4] = 255
        digits[i, :, r:r + 3, c:c + 10] = 255
    flags = find_issues(properties(digits, np.tile([28, 28], (200, 1))))
    assert not any(flags[k].any() for k in ISSUES), {k: int(v.sum()) for k, v in flags.items()}


def test_robust_z():
    z = robust_z(np.array([1.0, 2, 3, 4, 100]))
    assert z[2] == 0 and z[-1] > 30
    assert robust_z(np.ones(5)).tolist() == [0.0] * 5
