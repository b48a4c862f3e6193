"""The run's plots, drawn with matplotlib (object API, Agg: no display, thread-safe).

``figures(report)`` builds them from a report's metadata and rows; ``save_pngs`` writes them for
``memscan plot``; ``svg_strings`` embeds them in ``report.html``. Two show the relations of "Memorization
Through the Lens of Sample Gradients" on the user's data: CSG grows linearly with a sample's learning time
(Theorem 4.2; ``learning_time``, always) and with its memorization (Theorem 4.3; ``reference``, only when a
``memscan memorization`` estimate of the same dataset is given).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import __version__
from .errors import ConfigError
from .files import check_output_file, write_atomic_with
from .memorization import pearson
from .run_folder import PLOT_NAMES, REFERENCE_PLOT  # noqa: F401  (re-exported: the names figures() builds)
from .scores import percentile
from .text import printable

CATEGORY_COLORS = {"mislabeled": "#d62728", "atypical": "#ff7f0e", "memorized": "#9467bd", "ok": "#7f7f7f"}


def _figure(w=6.4, h=3.4):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _mark_epochs(ax, meta):
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    peak, done = meta.stop.peak_epoch, meta.stop.epochs_trained   # 1-based, as the x axis
    if peak:
        ax.axvline(peak, color="#d62728", ls="--", lw=1.2, label=f"weight-norm peak (epoch {peak})")
    if done:
        ax.axvline(done, color="#2ca02c", ls=":", lw=1.2, label=f"stop (epoch {done})")


def _series(meta, key):
    v = meta.curves.get(key) or []
    return np.array([np.nan if x is None else x for x in v], dtype=float)


def figures(meta, df, reference: Reference | None = None) -> dict:
    """``meta``: ``read_metadata(report)``; ``df``: the report as a DataFrame; ``reference``:
    ``load_reference`` (adds the "reference" figure). Returns name -> Figure, in ``PLOT_NAMES`` order."""
    figs = {"norms": norms_figure(meta), "gradient": gradient_figure(meta), "accuracy": accuracy_figure(meta),
            "csg": csg_figure(df), "classes": classes_figure(df), "learning_time": learning_time_figure(df),
            "noise_matrix": noise_matrix_figure(df, meta.dataset.classes)}
    if reference is not None:
        figs[REFERENCE_PLOT] = reference_figure(df, reference)
    return figs


def _epochs(meta) -> np.ndarray:
    return np.arange(1, len(_series(meta, "weight_norm")) + 1)


def norms_figure(meta):
    """The weight norms per epoch: the conv/linear norm is the stop signal."""
    fig, ax = _figure()
    for key, label, color in (("weight_norm", "conv/linear weights (the stop signal)", "#1f77b4"),
                              ("norm_layer_norm", "normalisation-layer scales", "#8c564b"),
                              ("total_norm", "all parameters", "#7f7f7f")):
        y = _series(meta, key)
        if len(y) and not np.isnan(y).all():
            ax.plot(_epochs(meta), y, marker="o", ms=3, label=label, color=color)
    _mark_epochs(ax, meta)
    ax.set(title="Weight norm per epoch", xlabel="epoch", ylabel="L2 norm")
    ax.legend(fontsize=8)
    return fig


def gradient_figure(meta):
    """The mean squared input-gradient norm per epoch, its maximum marked."""
    fig, ax = _figure()
    epochs, g = _epochs(meta), _series(meta, "grad_mean")
    if len(g):
        ax.plot(epochs, g, marker="o", ms=3, color="#1f77b4", label="mean ||d loss / d input||²")
        if not np.isnan(g).all():
            i = int(np.nanargmax(g))
            ax.scatter([epochs[i]], [g[i]], s=60, color="#d62728", zorder=3, label=f"its maximum (epoch {epochs[i]})")
    _mark_epochs(ax, meta)
    ax.set(title="Mean sample gradient per epoch", xlabel="epoch", ylabel="mean squared input-gradient norm")
    ax.legend(fontsize=8)
    return fig


def accuracy_figure(meta):
    """Training (and validation) accuracy per epoch, the training loss on a second axis."""
    fig, ax = _figure()
    epochs = _epochs(meta)
    for key, label, color in (("train_acc", "train accuracy (given labels)", "#1f77b4"),
                              ("val_acc", "validation accuracy", "#2ca02c")):
        y = _series(meta, key)
        if len(y) and not np.isnan(y).all():
            ax.plot(epochs, y, marker="o", ms=3, label=label, color=color)
    _mark_epochs(ax, meta)
    ax.set(title="Accuracy and loss per epoch", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    ax2 = ax.twinx()
    loss = _series(meta, "loss_mean")
    if len(loss):
        ax2.plot(epochs, loss, color="#ff7f0e", ls="--", label="train loss")
    ax2.set_ylabel("loss")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center right")
    return fig


def csg_figure(df):
    """log10 CSG, stacked by category (samples with CSG 0 left out)."""
    fig, ax = _figure()
    csg = df["csg"].to_numpy(dtype=float)
    pos = csg[csg > 0]
    if len(pos):
        lo, hi = np.log10(pos.min()), np.log10(pos.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 60)
        cats = [c for c in CATEGORY_COLORS if ((df["category"] == c) & (df["csg"] > 0)).any()]
        ax.hist([np.log10(df.loc[(df["category"] == c) & (df["csg"] > 0), "csg"].to_numpy(float)) for c in cats],
                bins=bins, stacked=True, color=[CATEGORY_COLORS[c] for c in cats], label=cats)
        ax.set_yscale("log")
    ax.set(title="CSG distribution by category", xlabel="log10 CSG", ylabel="samples")
    ax.legend(fontsize=8)
    return fig


TICK_CHARS = 32   # a class name's characters on an axis; a longer one is cut (a megabyte-long name hung matplotlib)


def _tick(name) -> str:
    """A class name as an axis label: printable, no mathtext, at most ``TICK_CHARS`` characters."""
    text = printable(name)
    text = text if len(text) <= TICK_CHARS else text[:TICK_CHARS - 1] + "…"
    return text.replace("$", r"\$")


def classes_figure(df):
    """Flagged samples per given class, stacked by category."""
    fig, ax = _figure(w=max(6.4, 0.45 * df["label_name"].nunique() + 2))
    classes = sorted(set(df["label_name"]))
    bottom = np.zeros(len(classes))
    for c in ("mislabeled", "atypical", "memorized"):
        counts = df[df["category"] == c]["label_name"].value_counts().reindex(classes, fill_value=0).to_numpy()
        ax.bar(range(len(classes)), counts, bottom=bottom, color=CATEGORY_COLORS[c], label=c)
        bottom += counts
    # names from data: control characters shown escaped, and "$" not read as matplotlib's math text
    shown = [_tick(c) for c in classes]
    ax.set_xticks(range(len(classes)), shown, rotation=45 if len(classes) > 6 else 0, ha="right"
                  if len(classes) > 6 else "center", fontsize=8)
    ax.set(title="Flagged samples per class (given label)", ylabel="samples")
    ax.legend(fontsize=8)
    return fig


def fmt(v, digits: int = 3) -> str:
    """A statistic as shown in legends and report.html: fixed digits, "n/a" where there is none."""
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def binned_means(x, y, bins):
    """Mean of ``y`` per bin of ``x``: (centers, means, stderr, counts), one entry per non-empty bin.

    ``bins``: increasing edges; a bin is [lo, hi), the last [lo, hi] (as ``np.histogram``). ``centers``: the
    mean x of the bin's samples (where its mean y belongs when a bin is wide or unevenly filled); ``stderr``:
    sd (ddof=1) / sqrt(count), NaN for a bin of one sample (its spread is unknown, not zero). Empty bins are
    dropped, as are samples outside the edges or with a NaN."""
    x, y, edges = (np.asarray(a, np.float64) for a in (x, y, bins))
    nb = len(edges) - 1
    if nb < 1:
        raise ValueError("binned_means needs at least two bin edges")
    idx = np.searchsorted(edges, x, side="right") - 1
    idx[x == edges[-1]] = nb - 1
    ok = np.isfinite(x) & np.isfinite(y) & (idx >= 0) & (idx < nb)
    idx, x, y = idx[ok], x[ok], y[ok]
    counts = np.bincount(idx, minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        centers = np.bincount(idx, x, nb) / counts
        means = np.bincount(idx, y, nb) / counts
        var = np.bincount(idx, (y - means[idx]) ** 2, nb) / (counts - 1)
        stderr = np.sqrt(var / counts)
    stderr[counts == 1] = np.nan
    keep = counts > 0
    return centers[keep], means[keep], stderr[keep], counts[keep]


def learning_time_edges(lt, max_bins: int = 30) -> np.ndarray:
    """Edges for integer learning times: one bin per epoch, or, with more than ``max_bins`` distinct values,
    bins of a whole number of epochs each (no epoch split between two bins)."""
    lt = np.asarray(lt, np.float64)
    lt = lt[np.isfinite(lt)]
    if not len(lt):
        return np.array([-0.5, 0.5])
    lo, hi = int(np.floor(lt.min())), int(np.ceil(lt.max()))
    width = 1 if len(np.unique(lt)) <= max_bins else int(np.ceil((hi - lo + 1) / max_bins))
    return lo - 0.5 + width * np.arange(int(np.ceil((hi - lo + 1) / width)) + 1)


def quantile_edges(x, bins: int = 10) -> np.ndarray:
    """Edges of ~``bins`` equally filled bins of ``x`` (fewer where values tie across a quantile)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return np.array([0.0, 1.0])
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    return edges if len(edges) > 1 else np.array([edges[0] - 0.5, edges[0] + 0.5])


def noise_matrix_figure(df, classes):
    """The estimated noise matrix P(given label | true label) as a heatmap (``health.dataset_health``)."""
    from .health import report_health
    k = len(classes)
    fig, ax = _figure(w=max(5.0, 0.45 * k + 2.5), h=max(4.2, 0.45 * k + 1.8))
    ax.set(title="Estimated noise matrix: P(given label | true label)")
    if "confident_class" not in df or "label" not in df or k > 60:   # beyond 60 classes a table reads better
        ax.text(0.5, 0.5, "not drawn: " + ("over 60 classes (see 'memscan rank --summary --json')" if k > 60 else
                "this report lacks the label/confident_class columns"), ha="center", va="center",
                transform=ax.transAxes)
        return fig
    h = report_health(df, classes)
    m = np.array(h["noise_matrix"], dtype=float)
    im = ax.imshow(np.nan_to_num(m), cmap="Blues", vmin=0, vmax=1)
    shown = [_tick(c) for c in classes]
    ax.set_xticks(range(k), shown, rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center", fontsize=8)
    ax.set_yticks(range(k), shown, fontsize=8)
    ax.set(xlabel="true label (estimated)", ylabel="given label")
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if np.isfinite(m[i, j]) and m[i, j] >= 0.005:
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(f"Estimated noise matrix P(given | true): label health {h['label_health']:.1%}\n"
                 f"(about {h['estimated_errors']} of {h['samples']} labels wrong)", fontsize=10)
    return fig


def learning_time_figure(df):
    """Theorem 4.2: mean CSG per learning time, with the samples behind each mean and a line through them."""
    from matplotlib.ticker import MaxNLocator
    fig, ax = _figure()
    ax.set(title="CSG against learning time")
    if "learning_time" not in df or "csg" not in df:   # a report written before learning_time was recorded
        ax.text(0.5, 0.5, "this report has no learning_time column:\nre-run 'memscan run' to draw it",
                ha="center", va="center", transform=ax.transAxes)
        return fig
    lt, csg = df["learning_time"].to_numpy(float), df["csg"].to_numpy(float)
    edges = learning_time_edges(lt)
    centers, means, se, counts = binned_means(lt, csg, edges)
    ax2 = ax.twinx()   # counts behind the means: a mean of three samples reads differently from one of 3000
    ax2.bar(centers, counts, width=0.8 * (edges[1] - edges[0]), color="#d9d9d9", label="samples per bin (right axis)")
    ax2.set_ylabel("samples")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ok = np.isfinite(lt) & np.isfinite(csg)
    r = pearson(lt[ok], csg[ok]) if ok.sum() > 1 else None
    ax.errorbar(centers, means, yerr=np.nan_to_num(se), fmt="o", ms=4, capsize=3, color="#1f77b4",
                label=f"mean CSG ± s.e.; Pearson r = {fmt(r, 2)} over {int(ok.sum())} samples")
    if len(centers) >= 2:
        slope, icpt = np.polyfit(centers, means, 1)
        xs = np.array([centers.min(), centers.max()])
        ax.plot(xs, icpt + slope * xs, color="#d62728", lw=1.2,
                label=f"least-squares line through the means ({slope:.3g} per epoch)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="learning time (epoch after which the sample stays correct; epochs trained if never)",
           ylabel="CSG (mean per bin)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8)
    return fig


class Reference(NamedTuple):
    """A ``memscan memorization`` estimate, read for a run: its rows and ``memorization_run.compare``'s result."""
    frame: object        # DataFrame with path, memorization, ...
    comparison: dict     # agreement rows, categories' precision/recall, matched counts, split_half


def load_reference(report, path) -> Reference:
    """Read ``path`` (a memorization folder or .parquet) against ``report``; ReportError when it is missing,
    not a memorization file, or of another dataset."""
    from .memorization_run import compare, read_memorization
    frame, _ = read_memorization(path)
    return Reference(frame, compare(report, path))


REFERENCE_COLUMNS = (("csg", "#1f77b4", "o", "-"), ("sgal", "#2ca02c", "s", "--"),
                     ("memorization_score", "#9467bd", "x", ":"))


def reference_figure(df, ref: Reference):
    """Theorem 4.3: the run's scores (as percentiles, one scale for all) per quantile bin of the reference
    memorization; a flat line at 0.5 would mean no relation."""
    joined = df.merge(ref.frame[["path", "memorization"]], on="path", how="inner")
    mem = joined["memorization"].to_numpy(float)
    joined, mem = joined[np.isfinite(mem)], mem[np.isfinite(mem)]
    edges = quantile_edges(mem)
    rho = {r["column"]: r["spearman"] for r in ref.comparison["agreement"]}
    fig, ax = _figure()
    for col, color, marker, ls in REFERENCE_COLUMNS:
        if col not in joined:
            continue
        y = joined[col].to_numpy(float)
        ok = np.isfinite(y)
        if not ok.any():
            continue
        c, m, se, _ = binned_means(mem[ok], percentile(y[ok]), edges)
        ax.errorbar(c, m, yerr=np.nan_to_num(se), color=color, marker=marker, ls=ls, ms=5, capsize=3,
                    mfc="none" if marker != "x" else color, label=f"{col} (Spearman {fmt(rho.get(col))})")
    ax.axhline(0.5, color="#7f7f7f", ls=":", lw=1, label="no relation")
    ax.set(title=f"The run's scores against reference memorization ({len(mem)} samples)",
           xlabel=f"reference memorization (mean of each of {len(edges) - 1} quantile bins)",
           ylabel="mean percentile in the run", ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left")
    return fig


def _load(report):
    from .report import read_metadata, read_report
    return read_metadata(report), read_report(report).to_pandas()


PNG_SIGNATURE = b"memscan"   # in the PNG's Software text chunk: a file memscan may replace


def save_pngs(report, out_dir, *, dpi: int = 120, reference=None) -> list[Path]:
    """The plots as ``out_dir/<name>.png`` (with ``reference``, a memorization estimate's path, also
    ``reference.png``); an existing file of that name that memscan did not write is refused before anything
    is written."""
    meta, df = _load(report)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out '{out_dir}' is a file; give a folder for the plots")
    ref = load_reference(report, reference) if reference is not None else None
    figs = figures(meta, df, ref)
    for name in figs:
        check_output_file(out_dir / f"{name}.png", signature=PNG_SIGNATURE, what="plot")
    out_dir.mkdir(parents=True, exist_ok=True)
    software = {"Software": f"memscan {__version__}"}
    return [write_atomic_with(out_dir / f"{name}.png",
                              lambda tmp, fig=fig: fig.savefig(tmp, dpi=dpi, format="png", metadata=software))
            for name, fig in figs.items()]


def svg_strings(meta: dict, df, reference: Reference | None = None) -> dict[str, str]:
    """name -> complete SVG document (embed as an <img> data URI: each keeps its own element ids)."""
    out = {}
    for name, fig in figures(meta, df, reference).items():
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        out[name] = buf.getvalue()
    return out
