"""``report.html``: one self-contained page a person reviews the flagged images in.

Everything is inside the file (thumbnails as data URIs, plots as SVG data URIs, a few lines of
plain JavaScript, no network), so it opens from disk, from a CI artifact or as an e-mail
attachment. The gallery renders one page of cards at a time from an embedded JSON list, which
keeps a thousand thumbnails smooth; filters and paging live in the URL hash
(``report.html#category=mislabeled&class=cat&page=2``) so a view can be linked.
"""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, MemscanError
from .files import plain
from .run_folder import REFERENCE_PLOT, RunFolder

GALLERY = {  # category -> the score its samples are ordered by (higher = more suspicious)
    "mislabeled": "mislabel_score", "atypical": "atypicality_score", "memorized": "memorization_score"}
SIGNATURE = b'<meta name="generator" content="memscan">'   # in the page's first bytes: a file memscan may replace
CARD_FIELDS = ("sample_id", "path", "label_name", "pred_name", "p_pred", "p_given", "mislabel_score",
               "memorization_score", "atypicality_score", "csg", "aum", "category")
EXPLAIN_FIELDS = ("suggested_label_name", "suggestion_agreement", "reason")   # reports before these lack them
AUDIT_FIELDS = ("image_issue", "duplicate_of", "duplicate_kind", "duplicate_conflict", "duplicate_suspect")
VIEWS = ("image issues", "duplicates")   # gallery filters beyond the categories (data_audit's columns)
DUPLICATE_GROUPS_SHOWN = 60
MEMBERS_SHOWN = 8            # per duplicate group on the page (the report has them all)


@dataclass
class HtmlResult:
    path: Path
    images: int                                   # cards in the gallery
    missing: list[str] = field(default_factory=list)  # samples whose image could not be read
    warning: str | None = None


def _image_reader(location: str):
    """path -> image bytes, from the dataset the run was made on (read-only)."""
    from .data import load_index
    loc = Path(location)
    try:
        table = load_index(loc)
        pos = {p: i for i, p in enumerate(table.paths)}
        return lambda p: table.read_bytes(pos[p]) if p in pos else None, None
    except MemscanError as e:
        root = loc.parent if loc.is_file() else loc
        return (lambda p: (root / p).read_bytes() if (root / p).is_file() else None,
                f"dataset '{loc}' could not be indexed ({e}); thumbnails read from files where they exist")


def thumbnail_uri(data: bytes, size: int) -> str:
    """A data URI: PNG for small images (kept sharp, upscaled by CSS), JPEG for photos."""
    from .data.decode import open_image, to_rgb
    img = to_rgb(open_image(data))
    buf = io.BytesIO()
    if max(img.size) <= 64:
        img.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    else:
        img.thumbnail((size, size))
        img.save(buf, format="JPEG", quality=82)
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def gallery_rows(df, /, *, per_category: int):
    """Rows shown in the gallery: each flagged category's top ``per_category``, by its own score; then the
    images with an image issue (least sharp first) and the duplicates (label conflicts first), each once,
    with a ``views`` column naming the extra filters a row belongs to."""
    import pandas as pd
    parts = [df[df["category"] == cat].sort_values(col, ascending=False, kind="stable").head(per_category)
             for cat, col in GALLERY.items()]
    views, extra = {}, []
    if "image_issue" in df:
        hit = df[df["image_issue"] != ""].sort_values("sharpness", kind="stable").head(per_category)
        dup = df[df["duplicate_group"] >= 0].sort_values(["duplicate_suspect", "duplicate_conflict", "duplicate_group"],
                                                         ascending=[False, False, True], kind="stable")
        for view, sub in zip(VIEWS, (hit, dup.head(per_category))):
            for sid in sub["sample_id"].tolist():
                views.setdefault(sid, []).append(view)
            extra.append(sub)
    rows = pd.concat(parts)
    if extra:   # a flagged sample already has its card: the views only add a filter to it
        more = pd.concat(extra).drop_duplicates("sample_id")
        rows = pd.concat([rows, more[~more["sample_id"].isin(rows["sample_id"])]])
    return rows.assign(views=[views.get(s, []) for s in rows["sample_id"].tolist()])


# What must not appear raw inside <script>: "<!--<script>" in a name switches the HTML parser into a
# state where the next "</script>" no longer ends the block, and the app script is swallowed; U+2028/9
# end a line in older JavaScript. JSON's \u escapes keep the values exact.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                              "\u2029": "\\u2029"})


def script_json(obj) -> str:
    """``obj`` as JSON that can sit inside a ``<script>`` element whatever strings it holds."""
    return json.dumps(obj, separators=(",", ":")).translate(_SCRIPT_SAFE)


def _py(v):
    v = plain(v)
    return round(v, 5) if isinstance(v, float) else v   # a smaller page; 5 digits are plenty to read


def _checked_dest(report: Path, dest: Path) -> Path:
    """A page written where the user asked: outside the dataset, replacing only a page memscan wrote."""
    from .dataset_guard import guard_for_report
    from .files import check_output_file
    guard_for_report(report).check_file(dest)
    return check_output_file(dest, signature=SIGNATURE, example="report.html")


def write_html(report, dest=None, *, per_category: int = 300, thumb_size: int = 128, reference=None) -> HtmlResult:
    """Write ``report.html`` for a run folder (default: inside it) and return what went in.

    ``per_category``: most suspicious samples shown per flagged category. Images are read from the
    dataset the run was made on; missing ones show as placeholders and are listed in the result.
    ``reference``: a ``memscan memorization`` estimate of the same dataset (folder or .parquet); adds the
    section "Memorization against the reference".
    """
    from .plots import load_reference, svg_strings
    from .rank import class_summary
    from .report import read_metadata, read_report, resolve_report_path
    from .files import write_text_atomic
    if per_category < 1:
        raise ConfigError(f"--per-category {per_category} must be at least 1")
    rpath = resolve_report_path(report)
    meta = read_metadata(rpath)
    dataset = meta.dataset
    df = read_report(rpath).to_pandas()
    if dest is None and RunFolder.is_run(rpath.parent):
        dest = RunFolder(rpath.parent).html
    else:   # a page beside a report outside a run folder replaces only a page memscan wrote
        dest = _checked_dest(rpath, Path(dest) if dest is not None else rpath.parent / "report.html")
    ref = load_reference(rpath, reference) if reference is not None else None   # a bad file fails before the work

    rows = gallery_rows(df, per_category=per_category)
    read, warning = _image_reader(dataset.location)
    cards, missing = _cards(rows, read, _margins(rpath, rows["sample_id"].to_numpy()), thumb_size)
    if missing and warning is None:
        warning = f"{len(missing)} images could not be read from '{dataset.location}'"

    plots = {k: "data:image/svg+xml;base64," + base64.b64encode(v.encode()).decode()
             for k, v in svg_strings(meta, df, ref).items()}
    ref_uri = plots.pop(REFERENCE_PLOT, None)
    payload = {"cards": cards, "classes": sorted(set(df["label_name"])), "all_classes": list(dataset.classes),
               "run_key": run_key(meta),
               "counts": {c: int((df["category"] == c).sum()) for c in GALLERY}}
    if "image_issue" in df:
        payload["counts"].update({"image issues": int((df["image_issue"] != "").sum()),
                                  "duplicates": int((df["duplicate_group"] >= 0).sum())})
    page = _PAGE.format(
        title=html.escape(f"memscan report — {Path(dataset.location).name}"),
        header=_header(meta, df),
        warning=f'<p class="warn">{html.escape(warning)}</p>' if warning else "",
        plots="\n".join(_plot(k, v) for k, v in plots.items()),
        reference=_reference_section(ref, ref_uri) if ref is not None else "",
        reference_nav=' · <a href="#reference">reference</a>' if ref is not None else "",
        summary=_summary_table(class_summary(df)),
        health=_health_section(df, dataset.classes) + _duplicates_section(df, meta, rpath, read, thumb_size),
        config=html.escape(json.dumps(_run_facts(meta), indent=1, default=str)),
        data=script_json(payload),
        script=_asset("report.js"), style=_asset("report.css"))
    write_text_atomic(dest, page)
    return HtmlResult(dest, len(cards), missing, warning)


def _cards(rows, read, margins, thumb_size: int) -> tuple[list, list]:
    """The gallery's cards (report fields, a thumbnail URI, the margin sparkline) and the paths that could not
    be read (their cards show a placeholder)."""
    cards, missing = [], []
    fields = list(CARD_FIELDS) + [f for f in (*EXPLAIN_FIELDS, *AUDIT_FIELDS, "views") if f in rows]
    for i, r in enumerate(rows[fields].to_dict("records")):
        try:
            data = read(r["path"])
            uri = thumbnail_uri(data, thumb_size) if data is not None else None
        except Exception:   # one unreadable image must not cost the whole report
            uri = None
        if uri is None:
            missing.append(r["path"])
        card = {k: (v if k == "views" else _py(v)) for k, v in r.items()} | {"img": uri}
        if margins is not None:
            card["margins"] = [None if not np.isfinite(m) else round(float(m), 2) for m in margins[i]]
        cards.append(card)
    return cards, missing


def _margins(rpath: Path, ids):
    """[cards, epochs] per-epoch margins of the gallery's samples for their sparklines, or None when the
    report is not in a run folder with its trajectories."""
    from .trajectories import sample_history
    folder = RunFolder(rpath.parent)
    if not RunFolder.is_run(rpath.parent) or not folder.trajectories.is_dir() or not len(ids):
        return None
    try:
        return sample_history(folder.trajectories, ids, "margin")
    except Exception:   # damaged trajectories must not cost the page: the cards just lack the sparkline
        return None


def run_key(meta) -> str:
    """Names this run's review decisions in the browser's storage: the same run (wherever its page is
    opened from) finds them again; another run, even of the same dataset, starts empty."""
    import hashlib
    ident = json.dumps([meta.dataset.fingerprint, meta.dataset.location, meta.config, meta.stop.epochs_trained,
                        meta.timings], sort_keys=True, default=str)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _asset(name: str) -> str:
    """The page's script and style, kept as files beside the code (``memscan/assets``)."""
    from importlib.resources import files
    return files("memscan").joinpath("assets", name).read_text(encoding="utf-8")


def _plot(name: str, uri: str) -> str:
    return f'<figure><img class="plot" alt="{name}" src="{uri}"></figure>'


def _cell(v) -> str:
    from .plots import fmt
    if isinstance(v, float):
        return f"<td>{fmt(v)}</td>"
    return f"<td>{html.escape(str('-' if v is None else v))}</td>"


def _table(cols, rows) -> str:
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in cols) + "</tr>" for r in rows)
    return f"<table class='summary'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


AGREEMENT_COLUMNS = ("column", "spearman", "pearson", "cosine", "samples", "spearman_of_reliability",
                     "spearman_of_ceiling")
CATEGORY_COLUMNS = ("category", "level", "flagged", "above_level", "precision", "recall", "split_half_precision")


def _reference_section(ref, plot_uri: str) -> str:
    """The figure, ``compare``'s agreement rows and the flagged categories' precision/recall against the reference."""
    from .plots import fmt
    c = ref.comparison
    rel = c.get("split_half") or {}
    intro = (f"<p><b>{c['matched']}</b> of the run's {c['of_run']} samples matched by path in "
             f"<code>{html.escape(str(c['reference']))}</code> ({c['of_reference']} samples); the reference's "
             f"split-half reliability (Spearman, for all its models) is {fmt(rel.get('spearman_full'))}. Each column "
             "is turned so that higher = more memorized. <i>Of reliability</i> and <i>of ceiling</i>: Spearman as a "
             "fraction of that reliability &rho; and of &radic;&rho;, what a perfect proxy would reach against this "
             "noisy reference (- where that reliability is not positive).</p>")
    cats = [{"category": k, **v} for k, v in c["categories"].items()]
    level = next(iter(c["categories"].values()), {}).get("level")
    return (f'<h2 id="reference">Memorization against the reference</h2>\n<div class="plots">'
            f'{_plot(REFERENCE_PLOT, plot_uri)}</div>\n{intro}\n{_table(AGREEMENT_COLUMNS, c["agreement"])}\n'
            f"<p>Flagged categories against reference memorization above {fmt(level, 2)}:</p>\n"
            f"{_table(CATEGORY_COLUMNS, cats)}\n")


def _health_section(df, classes) -> str:
    """Label health and the class pairs that overlap (the noise-matrix heatmap is among the plots)."""
    from .health import report_health
    if "confident_class" not in df or "label" not in df:
        return ""
    h = report_health(df, classes)
    cols = ("classes", "samples between them", "a labelled, b true", "b labelled, a true")
    rows = [dict(zip(cols, (f"{p['classes'][0]} / {p['classes'][1]}", p["samples"], p["given_a_true_b"],
                             p["given_b_true_a"]))) for p in h["overlapping_pairs"] if p["samples"] > 0][:10]
    table = _table(cols, rows) if rows else "<p>No class pair has estimated label errors between them.</p>"
    return (f'<h2 id="health">Dataset health</h2><p>Label health <b>{h["label_health"]:.1%}</b>: about '
            f'<b>{h["estimated_errors"]}</b> of {h["samples"]} labels are estimated wrong (confident learning\'s '
            "joint from the stop point's confident classes; the plot <i>noise_matrix</i> shows where they go). "
            "Class pairs that overlap most:</p>" + table)


def _thumb(read, path: str, size: int) -> str:
    try:
        data = read(path)
        uri = thumbnail_uri(data, size) if data is not None else None
    except Exception:
        uri = None
    alt = html.escape(path, quote=True)
    return f'<img class="thumb" alt="{alt}" src="{uri}">' if uri else '<div class="noimg">image not found</div>'


def _figure(img: str, path: str, label: str, note: str = "") -> str:
    return (f'<figure class="pair-member">{img}<figcaption><code>{html.escape(path)}</code><br>'
            f'<b>{html.escape(label)}</b>{html.escape(note)}</figcaption></figure>')


def _duplicates_section(df, meta, rpath: Path, read, size: int) -> str:
    """Duplicate groups side by side (label conflicts first) and the test images that leak from training."""
    if "duplicate_group" not in df:
        return ""
    a = meta.audit
    g = df[df["duplicate_group"] >= 0]
    order = (g.groupby("duplicate_group")["duplicate_conflict"].any().sort_values(ascending=False, kind="stable")
             .index[:DUPLICATE_GROUPS_SHOWN])
    rows = []
    for gid in order:
        members = g[g["duplicate_group"] == gid].sort_values("duplicate_suspect", kind="stable")
        figs = "".join(_figure(_thumb(read, r.path, size), r.path, r.label_name,
                               " (likely wrong)" if r.duplicate_suspect else "")
                       for r in members.head(MEMBERS_SHOWN).itertuples())
        if len(members) > MEMBERS_SHOWN:
            figs += f'<p class="more">+{len(members) - MEMBERS_SHOWN} more</p>'
        conflict = " conflict" if members["duplicate_conflict"].any() else ""
        rows.append(f'<div class="pair{conflict}">{figs}</div>')
    issues = a.get("image_issues") if isinstance(a.get("image_issues"), dict) else {}
    text = (f'<h2 id="duplicates">Duplicates, leaks and image issues</h2><p><b>{_esc(a.get("duplicate_groups", 0))}'
            f'</b> duplicate groups ({_esc(a.get("duplicate_images", 0))} images, {_esc(a.get("exact_duplicates", 0))} '
            f'with exactly the same pixels), <b>{_esc(a.get("conflicting_groups", 0))}</b> with conflicting labels. '
            "Image issues: " + (", ".join(f"{_esc(v)} {_esc(str(k).replace('_', ' '))}" for k, v in issues.items()
                                          if v) or "none") + ".</p>")
    if len(order) < g["duplicate_group"].nunique():
        text += f"<p>The first {len(order)} groups, label conflicts first (all in the report's duplicate_group).</p>"
    return text + f'<div class="pairs">{"".join(rows)}</div>' + _leaks_part(a.get("test"), rpath, read, size)


def _esc(v) -> str:
    return html.escape(str(v))


def _leaks_part(test, rpath: Path, read, size: int) -> str:
    from .data_audit import read_leaks
    if not isinstance(test, dict) or not test:
        return "<p>No test set was compared (<code>memscan run DATASET --test TEST_SET</code>).</p>"
    head = (f"<h3>Leaks into the test set</h3><p><b>{_esc(test.get('leaked'))}</b> of {_esc(test.get('n'))} test "
            f"images in <code>{_esc(test.get('location'))}</code> duplicate a training image "
            f"({_esc(test.get('exact'))} exactly, {_esc(test.get('label_differs'))} under another label).</p>")
    leaks_file = rpath.parent / "leaks.parquet"
    if not test.get("leaked") or not leaks_file.is_file():
        return head
    try:
        pairs = read_leaks(leaks_file).head(DUPLICATE_GROUPS_SHOWN)
    except MemscanError as e:
        return head + f'<p class="warn">{_esc(e)}</p>'
    read_test, _ = _image_reader(str(test.get("location")))
    rows = [f'<div class="pair{"" if r.same_label else " conflict"}">'
            + _figure(_thumb(read_test, r.test_path, size), r.test_path, r.test_label, " (test)")
            + _figure(_thumb(read, r.train_path, size), r.train_path, r.train_label, f" (train, {r.similarity:.3f})")
            + "</div>" for r in pairs.itertuples()]
    return head + f'<div class="pairs">{"".join(rows)}</div>'


def _run_facts(meta) -> dict:
    d = meta.to_dict()
    d["dataset"].pop("skipped")
    return {k: d[k] for k in ("config", "stop", "dataset", "device", "precision", "timings", "memscan_version")}


def _header(meta, df) -> str:
    s = meta.stop
    cats = {c: int((df["category"] == c).sum()) for c in ("mislabeled", "atypical", "memorized", "ok")}
    bits = [f"<b>{len(df)}</b> samples, <b>{len(set(df['label_name']))}</b> classes",
            f"model <code>{html.escape(str(meta.config.get('model')))}</code>",
            f"stopped after <b>{s.epochs_trained}</b> epochs: {html.escape(str(s.reason))}",
            "flagged: " + ", ".join(f"<b>{v}</b> {k}" for k, v in cats.items())]
    bits += [f"<span class='warn'>caution: {html.escape(w)}</span>" for w in meta.warnings]
    return "<ul class='facts'>" + "".join(f"<li>{b}</li>" for b in bits) + "</ul>"


def _summary_table(rows) -> str:
    cols = ("class", "samples", "mislabeled", "atypical", "memorized", "accuracy", "most_predicted_instead",
            "mean_mislabel_score")
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v or '-'))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='summary'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="memscan"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<script>
window.memscanErrors = [];
window.addEventListener('error', e => {{ window.memscanErrors.push(String(e.message));
  document.documentElement.setAttribute('data-js-errors', String(window.memscanErrors.length)); }});
</script>
<style>{style}</style></head>
<body>
<h1>{title}</h1>
{header}
{warning}
<nav><a href="#gallery-section">gallery</a> · <a href="#plots">plots</a> · <a href="#classes">classes</a> ·
<a href="#health">health</a> · <a href="#duplicates">duplicates</a> · <a href="#config">config</a>{reference_nav}</nav>
<h2 id="gallery-section">Flagged samples</h2>
<div class="controls">
<label>category <select id="category"></select></label>
<label>class <select id="class"></select></label>
<select id="size"></select>
<button id="prev">◀ previous</button><button id="next">next ▶</button><span id="range"></span>
</div>
<div class="controls review"><span id="decided">no decisions yet</span>
<button id="download">download decisions.csv</button><button id="clear">clear decisions</button>
<span class="keys">review: j/k or ←/→ move · a keep · s relabel to the suggestion · r relabel to… · x remove ·
u undo · n note; decisions stay in this browser until cleared; then <code>memscan apply RUN decisions.csv
--out cleaned.csv</code></span></div>
<div id="gallery"></div>
<h2 id="plots">Training signals</h2>
<div class="plots">
{plots}
</div>
{reference}{health}<h2 id="classes">Per-class summary</h2>
{summary}
<h2 id="config">Run</h2>
<pre>{config}</pre>
<script type="application/json" id="memscan-data">{data}</script>
<script>{script}</script>
</body></html>
"""
