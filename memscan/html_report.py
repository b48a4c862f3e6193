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


from .errors import ConfigError, MemscanError
from .files import plain
from .run_folder import REFERENCE_PLOT, RunFolder

GALLERY = {  # category -> the score its samples are ordered by (higher = more suspicious)
    "mislabeled": "mislabel_score", "atypical": "atypicality_score", "memorized": "memorization_score"}
SIGNATURE = b'<meta name="generator" content="memscan">'   # in the page's first bytes: a file memscan may replace
CARD_FIELDS = ("sample_id", "path", "label_name", "pred_name", "p_pred", "p_given", "mislabel_score",
               "memorization_score", "atypicality_score", "csg", "aum", "category")


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
    """Rows shown in the gallery: each flagged category's top ``per_category``, by its own score."""
    parts = []
    for cat, col in GALLERY.items():
        sub = df[df["category"] == cat].sort_values(col, ascending=False, kind="stable").head(per_category)
        parts.append(sub)
    import pandas as pd
    return pd.concat(parts) if parts else df.head(0)


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
    cards, missing = [], []
    for r in rows[list(CARD_FIELDS)].to_dict("records"):
        try:
            data = read(r["path"])
            uri = thumbnail_uri(data, thumb_size) if data is not None else None
        except Exception:   # one unreadable image must not cost the whole report
            uri = None
        if uri is None:
            missing.append(r["path"])
        cards.append({k: _py(v) for k, v in r.items()} | {"img": uri})
    if missing and warning is None:
        warning = f"{len(missing)} images could not be read from '{dataset.location}'"

    plots = {k: "data:image/svg+xml;base64," + base64.b64encode(v.encode()).decode()
             for k, v in svg_strings(meta, df, ref).items()}
    ref_uri = plots.pop(REFERENCE_PLOT, None)
    payload = {"cards": cards, "classes": sorted(set(df["label_name"])),
               "counts": {c: int((df["category"] == c).sum()) for c in GALLERY}}
    page = _PAGE.format(
        title=html.escape(f"memscan report — {Path(dataset.location).name}"),
        header=_header(meta, df),
        warning=f'<p class="warn">{html.escape(warning)}</p>' if warning else "",
        plots="\n".join(_plot(k, v) for k, v in plots.items()),
        reference=_reference_section(ref, ref_uri) if ref is not None else "",
        reference_nav=' · <a href="#reference">reference</a>' if ref is not None else "",
        summary=_summary_table(class_summary(df)),
        config=html.escape(json.dumps(_run_facts(meta), indent=1, default=str)),
        data=script_json(payload),
        script=_SCRIPT, style=_STYLE)
    write_text_atomic(dest, page)
    return HtmlResult(dest, len(cards), missing, warning)


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
CATEGORY_COLUMNS = ("category", "level", "flagged", "above_level", "precision", "recall")


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


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;max-width:1200px;padding:1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.facts{padding-left:1.2em}.warn{background:#fff3cd;padding:.5em;border:1px solid #e0c36c}
.controls{display:flex;gap:1em;flex-wrap:wrap;align-items:center;margin:.6em 0}
#gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;font-size:12px;background:#fafafa}
.card img.thumb,.card .noimg{width:128px;height:128px;object-fit:contain;image-rendering:pixelated;display:block;
margin:0 auto 4px;background:#eee}.card .noimg{display:flex;align-items:center;justify-content:center;color:#888}
.card .path{word-break:break-all;font-family:monospace;font-size:11px}
.cat-mislabeled{border-left:4px solid #d62728}.cat-atypical{border-left:4px solid #ff7f0e}
.cat-memorized{border-left:4px solid #9467bd}.given{color:#d62728}.pred{color:#2ca02c}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:10px}
.plots figure{margin:0}.plots img{width:100%}
table.summary{border-collapse:collapse;font-size:13px}table.summary td,table.summary th{border:1px solid #ddd;
padding:3px 8px;text-align:right}table.summary td:first-child{text-align:left}
pre{background:#f4f4f4;padding:.8em;overflow:auto;font-size:12px}
"""

_SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById('memscan-data').textContent);
  const $ = (id) => document.getElementById(id);
  const state = {category: 'all', cls: 'all', page: 1, size: 60};
  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    if (h.get('category')) state.category = h.get('category');
    if (h.get('class')) state.cls = h.get('class');
    if (h.get('page')) state.page = Math.max(1, parseInt(h.get('page'), 10) || 1);
    if (h.get('size')) state.size = Math.max(1, parseInt(h.get('size'), 10) || 60);
  }
  function writeHash() {
    const h = new URLSearchParams({category: state.category, class: state.cls, page: state.page, size: state.size});
    history.replaceState(null, '', '#' + h.toString());
  }
  function option(sel, value, label) {
    const o = document.createElement('option'); o.value = value; o.textContent = label; sel.appendChild(o);
  }
  function filtered() {
    return data.cards.filter(c => (state.category === 'all' || c.category === state.category) &&
                                  (state.cls === 'all' || c.label_name === state.cls));
  }
  function card(c) {
    const d = document.createElement('div'); d.className = 'card cat-' + c.category;
    if (c.img) {
      const im = document.createElement('img'); im.className = 'thumb'; im.loading = 'lazy'; im.src = c.img;
      im.alt = c.path; d.appendChild(im);
    } else {
      const m = document.createElement('div'); m.className = 'noimg'; m.textContent = 'image not found'; d.appendChild(m);
    }
    const lines = [
      ['path', c.path],
      ['', 'given ', ['given', c.label_name], ' → predicted ', ['pred', c.pred_name + ' (' + c.p_pred.toFixed(2) + ')']],
      ['', c.category + ' · mislabel ' + c.mislabel_score.toFixed(3) + ' · memorization ' +
           c.memorization_score.toFixed(3)],
      ['', 'csg ' + c.csg.toPrecision(3) + ' · aum ' + c.aum.toFixed(2) + ' · p(given) ' + c.p_given.toFixed(2)],
    ];
    for (const [cls, ...parts] of lines) {
      const p = document.createElement('div'); if (cls) p.className = cls;
      for (const part of parts) {
        if (Array.isArray(part)) { const s = document.createElement('span'); s.className = part[0];
          s.textContent = part[1]; p.appendChild(s); }
        else p.appendChild(document.createTextNode(part));
      }
      d.appendChild(p);
    }
    return d;
  }
  function render() {
    const rows = filtered();
    const pages = Math.max(1, Math.ceil(rows.length / state.size));
    state.page = Math.min(state.page, pages);
    const start = (state.page - 1) * state.size, shown = rows.slice(start, start + state.size);
    const g = $('gallery'); g.replaceChildren(...shown.map(card));
    $('range').textContent = rows.length ? `${start + 1}–${start + shown.length} of ${rows.length} (page ${state.page}/${pages})`
                                         : 'no samples match these filters';
    $('prev').disabled = state.page <= 1; $('next').disabled = state.page >= pages;
    $('category').value = state.category; $('class').value = state.cls; $('size').value = String(state.size);
    document.body.dataset.shown = String(shown.length); document.body.dataset.matching = String(rows.length);
    writeHash();
  }
  option($('category'), 'all', `all flagged (${data.cards.length})`);
  for (const [k, v] of Object.entries(data.counts)) option($('category'), k, `${k} (${v} flagged)`);
  option($('class'), 'all', 'all classes');
  for (const c of data.classes) option($('class'), c, c);
  for (const s of [30, 60, 120, 240]) option($('size'), String(s), s + ' per page');
  readHash();
  if (![30, 60, 120, 240].includes(state.size)) option($('size'), String(state.size), state.size + ' per page');
  $('category').onchange = e => { state.category = e.target.value; state.page = 1; render(); };
  $('class').onchange = e => { state.cls = e.target.value; state.page = 1; render(); };
  $('size').onchange = e => { state.size = parseInt(e.target.value, 10); state.page = 1; render(); };
  $('prev').onclick = () => { state.page -= 1; render(); };
  $('next').onclick = () => { state.page += 1; render(); };
  window.addEventListener('hashchange', () => { readHash(); render(); });
  render();
})();
"""

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
<a href="#config">config</a>{reference_nav}</nav>
<h2 id="gallery-section">Flagged samples</h2>
<div class="controls">
<label>category <select id="category"></select></label>
<label>class <select id="class"></select></label>
<select id="size"></select>
<button id="prev">◀ previous</button><button id="next">next ▶</button><span id="range"></span>
</div>
<div id="gallery"></div>
<h2 id="plots">Training signals</h2>
<div class="plots">
{plots}
</div>
{reference}<h2 id="classes">Per-class summary</h2>
{summary}
<h2 id="config">Run</h2>
<pre>{config}</pre>
<script type="application/json" id="memscan-data">{data}</script>
<script>{script}</script>
</body></html>
"""
