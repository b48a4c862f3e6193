"""The paper's relations on the user's data: CSG against learning time (always) and the run's scores against a
reference memorization estimate (``--reference``); the binning behind both, and who owns reference.png."""
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy.stats import pearsonr, rankdata

from memscan.cli import EXIT_CODES, main
from memscan.errors import ReportError
from memscan.plots import (PLOT_NAMES, binned_means, figures, fmt, learning_time_edges, load_reference,
                           quantile_edges)
from memscan.report import read_metadata, read_report
from memscan.run_folder import RunFolder


def make_reference(data, root):
    """A real (tiny) ``memscan memorization`` estimate of ``data``: 6 models of 4 epochs (~2 s on one core)."""
    from memscan.config import RunConfig
    from memscan.memorization_run import Plan, memorization
    cfg = RunConfig(max_epochs=4, batch_size=16, image_size=8, augment="none", stop="none", anneal_epochs=0,
                    precision="fp32")
    memorization(data, cfg, Plan(models=6, subset=0.5), out=root / "mem", cache_dir=root / "cache")
    return root / "mem"


@pytest.fixture(scope="module")
def reference(digits_run, tmp_path_factory):
    return make_reference(digits_run[0], tmp_path_factory.mktemp("reference"))


def test_binned_means_by_hand():
    x = np.array([0, 0, 0, 1, 3, 3, 4.5, 5.5, np.nan, 3])
    y = np.array([1., 2, 6, 7, 10, 14, 3, 99, 5, np.nan])
    edges = [-0.5, 0.5, 1.5, 2.5, 3.5, 4.5]     # bin [1.5, 2.5) is empty; 4.5 falls in the closed last bin
    centers, means, se, counts = binned_means(x, y, edges)
    np.testing.assert_array_equal(centers, [0, 1, 3, 4.5])       # empty bin dropped; outside (5.5) and NaNs left out
    np.testing.assert_array_equal(counts, [3, 1, 2, 1])
    np.testing.assert_allclose(means, [np.mean([1, 2, 6]), 7, 12, 3])
    want = [np.std([1, 2, 6], ddof=1) / np.sqrt(3), np.nan, np.std([10, 14], ddof=1) / np.sqrt(2), np.nan]
    np.testing.assert_allclose(se, want)                          # one sample: NaN (spread unknown), not 0
    # centers are the mean x of each bin's samples, not the midpoints of its edges
    c, m, _, n = binned_means([0.1, 0.2, 0.9], [1, 2, 3], [0, 0.5, 1])
    np.testing.assert_allclose(c, [0.15, 0.9])
    np.testing.assert_allclose(m, [1.5, 3])
    with pytest.raises(ValueError):
        binned_means([1], [1], [0])


def test_learning_time_edges():
    lt = np.array([0, 0, 2, 7, 7, 7])
    edges = learning_time_edges(lt)
    np.testing.assert_array_equal(edges, np.arange(-0.5, 8))     # one bin per epoch
    np.testing.assert_array_equal(binned_means(lt, lt, edges)[0], [0, 2, 7])
    many = np.arange(101)                                         # more than 30 distinct: whole epochs per bin
    edges = learning_time_edges(many)
    assert len(edges) - 1 <= 30 and np.all(np.diff(edges) == edges[1] - edges[0]) and (edges[1] - edges[0]) % 1 == 0
    assert np.histogram(many, edges)[0].sum() == 101 and np.all(edges % 1 == 0.5)
    np.testing.assert_array_equal(quantile_edges(np.r_[np.zeros(50), np.arange(50)]), np.unique(
        np.quantile(np.r_[np.zeros(50), np.arange(50)], np.linspace(0, 1, 11))))   # tied quantiles merge
    np.testing.assert_array_equal(quantile_edges([2.0, 2.0]), [1.5, 2.5])


def _errorbar_lines(ax):
    """(x, y, label) of each errorbar series on ``ax``."""
    return [(c.lines[0].get_xdata(), c.lines[0].get_ydata(), c.get_label()) for c in ax.containers
            if type(c).__name__ == "ErrorbarContainer"]


def test_learning_time_figure_matches_the_report(digits_run):
    _, run_dir = digits_run
    meta, df = read_metadata(run_dir), read_report(run_dir).to_pandas()
    figs = figures(meta, df)
    assert list(figs) == list(PLOT_NAMES) and "reference" not in figs
    ax = figs["learning_time"].axes[0]
    ((x, y, label),) = _errorbar_lines(ax)
    by_hand = df.groupby("learning_time")["csg"].mean()            # one bin per epoch (few distinct values)
    np.testing.assert_array_equal(x, by_hand.index.to_numpy(float))
    np.testing.assert_allclose(y, by_hand.to_numpy())
    r = pearsonr(df["learning_time"], df["csg"])[0]
    assert f"Pearson r = {r:.2f} over {len(df)} samples" in label
    slope, icpt = np.polyfit(by_hand.index.to_numpy(float), by_hand.to_numpy(), 1)
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("least-squares")]
    np.testing.assert_allclose(line.get_ydata(), icpt + slope * line.get_xdata())
    bars = figs["learning_time"].axes[1].patches                   # the count behind each mean
    assert [int(b.get_height()) for b in bars] == df["learning_time"].value_counts().sort_index().tolist()


def test_reference_figure_matches_compare(digits_run, reference):
    from memscan.memorization_run import read_memorization
    _, run_dir = digits_run
    meta, df = read_metadata(run_dir), read_report(run_dir).to_pandas()
    ref = load_reference(run_dir, reference)
    ax = figures(meta, df, ref)["reference"].axes[0]
    lines = {label.split(" (")[0]: (x, y, label) for x, y, label in _errorbar_lines(ax)}
    assert set(lines) == {"csg", "sgal", "memorization_score"}
    rho = {r["column"]: r["spearman"] for r in ref.comparison["agreement"]}
    joined = df.merge(read_memorization(reference)[0][["path", "memorization"]], on="path").dropna(
        subset=["memorization"])
    mem = joined["memorization"].to_numpy()
    edges = np.unique(np.quantile(mem, np.linspace(0, 1, 11)))
    bin_of = np.clip(np.searchsorted(edges, mem, side="right") - 1, 0, len(edges) - 2)
    for col, (x, y, label) in lines.items():
        assert label == f"{col} (Spearman {rho[col]:.3f})"
        pct = rankdata(joined[col]) / len(joined)                  # percentile among the matched samples
        by_hand = [(mem[bin_of == b].mean(), pct[bin_of == b].mean()) for b in np.unique(bin_of)]
        np.testing.assert_allclose(np.c_[x, y], by_hand)


def test_plot_command_with_and_without_reference(digits_run, reference, tmp_path, capsys):
    _, run_dir = digits_run
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "plain")]) == 0
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == sorted(f"{n}.png" for n in PLOT_NAMES)
    capsys.readouterr()
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "ref"), "--reference", str(reference)]) == 0
    files = capsys.readouterr().out.split()
    assert [f.rsplit("/", 1)[-1] for f in files] == [f"{n}.png" for n in PLOT_NAMES] + ["reference.png"]
    for name in ("learning_time.png", "reference.png"):
        with Image.open(tmp_path / "ref" / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
    # the .parquet file itself is as good as its folder
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "ref"), "--reference",
                 str(reference / "memorization.parquet")]) == 0


def test_bad_reference_is_a_report_error(digits_run, tmp_path, capsys):
    _, run_dir = digits_run
    code = EXIT_CODES[ReportError]
    for bad, why in ((tmp_path / "nowhere", "no memorization.parquet at"),
                     (run_dir / "report.parquet", "is not a memorization file")):
        capsys.readouterr()
        assert main(["plot", str(run_dir), "--out", str(tmp_path / "p"), "--reference", str(bad)]) == code
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and why in err and str(bad) in err and err.startswith("error:")
        assert not (tmp_path / "p").exists()                        # refused before anything was written


def test_reference_png_belongs_to_the_run_folder(digits_run, reference, tmp_path):
    """reference.png is drawn only on request but is memscan's like the others: replaced by a later
    'memscan plot', removed by --overwrite (reset), its interrupted writes cleaned."""
    _, run_dir = digits_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for _ in range(2):   # the second time replaces what the first wrote
        assert main(["plot", str(copy), "--reference", str(reference)]) == 0
    plots = RunFolder(copy).plots
    assert (plots / "reference.png").is_file() and (plots / "learning_time.png").is_file()
    (plots / "reference.png.tmp12345").write_bytes(b"cut short")
    (plots / "mine.png").write_bytes(b"the user's")
    RunFolder(copy).clean_interrupted()
    assert not (plots / "reference.png.tmp12345").exists()
    RunFolder(copy).reset()
    assert sorted(p.name for p in plots.iterdir()) == ["mine.png"]


def test_fmt():
    assert fmt(0.12345) == "0.123" and fmt(None) == "n/a" and fmt(float("nan")) == "n/a" and fmt(-1.0, 2) == "-1.00"


def test_long_class_names_are_cut_on_the_axes():
    from memscan.plots import TICK_CHARS, _tick
    assert _tick("cat") == "cat" and _tick("$x$") == r"\$x\$"
    long = _tick("y" * 200)
    assert len(long) == TICK_CHARS and long.endswith("…")
