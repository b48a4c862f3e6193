"""The run's plots, drawn with matplotlib (object API, Agg: no display, thread-safe).

``figures(report)`` builds them from a report's metadata and rows; ``save_pngs`` writes them for
``memscan plot``; ``svg_strings`` embeds them in ``report.html``.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from . import __version__
from .errors import ConfigError
from .files import check_output_file, write_atomic_with
from .run_folder import PLOT_NAMES  # noqa: F401  (re-exported: the names figures() builds)
from .scores import upper_fence
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


def figures(meta, df) -> dict:
    """``meta``: ``read_metadata(report)``; ``df``: the report as a DataFrame. Returns name -> Figure."""
    figs = {}
    epochs = np.arange(1, len(_series(meta, "weight_norm")) + 1)

    fig, ax = _figure()
    for key, label, color in (("weight_norm", "conv/linear weights (the stop signal)", "#1f77b4"),
                              ("norm_layer_norm", "normalisation-layer scales", "#8c564b"),
                              ("total_norm", "all parameters", "#7f7f7f")):
        y = _series(meta, key)
        if len(y) and not np.isnan(y).all():
            ax.plot(epochs, y, marker="o", ms=3, label=label, color=color)
    _mark_epochs(ax, meta)
    ax.set(title="Weight norm per epoch", xlabel="epoch", ylabel="L2 norm")
    ax.legend(fontsize=8)
    figs["norms"] = fig

    fig, ax = _figure()
    g = _series(meta, "grad_mean")
    if len(g):
        ax.plot(epochs, g, marker="o", ms=3, color="#1f77b4", label="mean ||d loss / d input||²")
        if not np.isnan(g).all():
            i = int(np.nanargmax(g))
            ax.scatter([epochs[i]], [g[i]], s=60, color="#d62728", zorder=3, label=f"its maximum (epoch {epochs[i]})")
    _mark_epochs(ax, meta)
    ax.set(title="Mean sample gradient per epoch", xlabel="epoch", ylabel="mean squared input-gradient norm")
    ax.legend(fontsize=8)
    figs["gradient"] = fig

    fig, ax = _figure()
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
    figs["accuracy"] = fig

    fig, ax = _figure()
    csg = df["csg"].to_numpy(dtype=float)
    pos = csg[csg > 0]
    if len(pos):
        lo, hi = np.log10(pos.min()), np.log10(pos.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 60)
        cats = [c for c in CATEGORY_COLORS if ((df["category"] == c) & (df["csg"] > 0)).any()]
        ax.hist([np.log10(df.loc[(df["category"] == c) & (df["csg"] > 0), "csg"].to_numpy(float)) for c in cats],
                bins=bins, stacked=True, color=[CATEGORY_COLORS[c] for c in cats], label=cats)
        fence = upper_fence(csg)
        ax.axvline(np.log10(fence), color="black", ls="--", lw=1.2,
                   label=f"memorized/atypical threshold\n(Tukey fence, csg > {fence:.3g})")
        ax.set_yscale("log")
    ax.set(title="CSG distribution by category", xlabel="log10 CSG", ylabel="samples")
    ax.legend(fontsize=8)
    figs["csg"] = fig

    fig, ax = _figure(w=max(6.4, 0.45 * df["label_name"].nunique() + 2))
    classes = sorted(set(df["label_name"]))
    bottom = np.zeros(len(classes))
    for c in ("mislabeled", "atypical", "memorized"):
        counts = df[df["category"] == c]["label_name"].value_counts().reindex(classes, fill_value=0).to_numpy()
        ax.bar(range(len(classes)), counts, bottom=bottom, color=CATEGORY_COLORS[c], label=c)
        bottom += counts
    # names from data: control characters shown escaped, and "$" not read as matplotlib's math text
    shown = [printable(c).replace("$", r"\$") for c in classes]
    ax.set_xticks(range(len(classes)), shown, rotation=45 if len(classes) > 6 else 0, ha="right"
                  if len(classes) > 6 else "center", fontsize=8)
    ax.set(title="Flagged samples per class (given label)", ylabel="samples")
    ax.legend(fontsize=8)
    figs["classes"] = fig
    return figs


def _load(report):
    from .report import read_metadata, read_report
    return read_metadata(report), read_report(report).to_pandas()


PNG_SIGNATURE = b"memscan"   # in the PNG's Software text chunk: a file memscan may replace


def save_pngs(report, out_dir, *, dpi: int = 120) -> list[Path]:
    """The plots as ``out_dir/<name>.png``; an existing file of that name that memscan did not write
    is refused before anything is written."""
    meta, df = _load(report)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out '{out_dir}' is a file; give a folder for the plots")
    figs = figures(meta, df)
    for name in figs:
        check_output_file(out_dir / f"{name}.png", signature=PNG_SIGNATURE, what="plot")
    out_dir.mkdir(parents=True, exist_ok=True)
    software = {"Software": f"memscan {__version__}"}
    return [write_atomic_with(out_dir / f"{name}.png",
                              lambda tmp, fig=fig: fig.savefig(tmp, dpi=dpi, format="png", metadata=software))
            for name, fig in figs.items()]


def svg_strings(meta: dict, df) -> dict[str, str]:
    """name -> complete SVG document (embed as an <img> data URI: each keeps its own element ids)."""
    out = {}
    for name, fig in figures(meta, df).items():
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        out[name] = buf.getvalue()
    return out
