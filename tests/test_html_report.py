import html
import json
import re
import shutil
import subprocess
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memscan.cli import EXIT_CODES, main
from memscan.errors import ConfigError, ReportError
from memscan.html_report import GALLERY, SIGNATURE, gallery_rows, script_json, write_html
from memscan.plots import PLOT_NAMES
from memscan.report import read_report

from helpers import rewrite_report
from test_output_safety import frame, write_report
from test_plots import make_reference

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no headless chromium on this machine (.ci/run installs "
                                   "Debian's 'chromium'; apt-get install chromium to run these)")


def render(html_file, fragment=""):
    """The DOM after the page's scripts ran, and the page's console messages, from real headless Chromium."""
    p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--enable-logging=stderr", "--v=0",
                        "--virtual-time-budget=3000", "--dump-dom", html_file.resolve().as_uri() + fragment],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    console = [line for line in p.stderr.splitlines() if ":CONSOLE" in line]
    return p.stdout, console


def attr(dom, name):
    m = re.search(rf'{name}="(\d+)"', dom)
    return None if m is None else int(m.group(1))


@pytest.fixture(scope="module")
def page(digits_run, tmp_path_factory):
    _, run_dir = digits_run
    res = write_html(run_dir, tmp_path_factory.mktemp("html") / "report.html")
    return run_dir, res


def test_page_is_self_contained(page):
    run_dir, res = page
    text = res.path.read_text()
    df = read_report(run_dir).to_pandas()
    want = sum(min(300, int((df["category"] == c).sum())) for c in GALLERY)
    assert res.images == want and res.missing == [] and res.warning is None
    assert text.count('"img":"data:image/png;base64,') == want      # every card carries its thumbnail
    assert text.count('<img class="plot"') == len(PLOT_NAMES)
    assert not re.search(r'(src|href)="(https?:)?//', text)          # nothing fetched from the network
    assert "<script src" not in text
    assert 'alt="learning_time"' in text and "Memorization against the reference" not in text   # no --reference


def test_gallery_rows_order_and_limit(digits_run):
    _, run_dir = digits_run
    df = read_report(run_dir).to_pandas()
    rows = gallery_rows(df, per_category=2)
    for cat, col in GALLERY.items():
        sub = rows[rows["category"] == cat]
        assert len(sub) == min(2, int((df["category"] == cat).sum()))
        assert sub[col].is_monotonic_decreasing
    with pytest.raises(ConfigError, match="at least 1"):
        write_html(run_dir, per_category=0)


def test_missing_images_become_placeholders(digits_run, tmp_path):
    data, run_dir = digits_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    df = read_report(copy).to_pandas()
    df["path"] = "gone/" + df["path"]
    rewrite_report(copy, copy / "report.parquet", df)
    res = write_html(copy)
    assert res.path == copy / "report.html" and res.images > 0
    assert len(res.missing) == res.images and "could not be read" in res.warning


def test_plot_command_writes_pngs(digits_run, tmp_path, capsys):
    _, run_dir = digits_run
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "plots")]) == 0
    files = capsys.readouterr().out.split()
    assert [f.rsplit("/", 1)[-1] for f in files] == [f"{n}.png" for n in PLOT_NAMES]
    for f in files:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.size[0] > 300


def test_report_command(digits_run, tmp_path, capsys):
    _, run_dir = digits_run
    dest = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--out", str(dest), "--per-category", "3"]) == 0
    assert dest.exists() and "wrote" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "none")]) == 2


@pytest.fixture(scope="module")
def reference(digits_run, tmp_path_factory):
    """A memorization estimate of the digits run's dataset (for --reference)."""
    return make_reference(digits_run[0], tmp_path_factory.mktemp("reference"))


def test_report_with_reference(digits_run, reference, tmp_path, capsys):
    from memscan.memorization_run import compare
    _, run_dir = digits_run
    dest = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--out", str(dest), "--per-category", "3", "--reference", str(reference),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reference"] == str(reference)
    text = dest.read_text()
    section = text[text.index('<h2 id="reference">Memorization against the reference</h2>'):text.index('id="classes"')]
    assert section.count('<img class="plot" alt="reference"') == 1 and '<a href="#reference">' in text
    assert text.count('<img class="plot"') == len(PLOT_NAMES) + 1
    cmp = compare(run_dir, reference)
    for row in cmp["agreement"]:   # each column with the Spearman compare() gives, as the page prints it
        assert f"<tr><td>{html.escape(row['column'])}</td><td>{row['spearman']:.3f}</td>" in section
    for cat, fp in cmp["categories"].items():
        assert f"<tr><td>{cat}</td><td>{fp['level']:.3f}</td><td>{fp['flagged']}</td>" in section
    assert f"<b>{cmp['matched']}</b> of the run's {cmp['of_run']} samples" in section


def test_report_with_a_bad_reference(digits_run, tmp_path, capsys):
    _, run_dir = digits_run
    dest, bad = tmp_path / "r.html", tmp_path / "no-such-reference"
    assert main(["report", str(run_dir), "--out", str(dest), "--reference", str(bad)]) == EXIT_CODES[ReportError]
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"no memorization.parquet at '{bad}'" in err
    assert not dest.exists()


@needs_browser
def test_gallery_renders_in_chromium(page):
    run_dir, res = page
    df = read_report(run_dir).to_pandas()
    dom, console = render(res.path)
    assert console == [], console                       # no errors, no warnings, nothing logged
    assert not re.search(r'<html[^>]*data-js-errors', dom)
    assert attr(dom, "data-matching") == res.images
    assert attr(dom, "data-shown") == len(re.findall(r'<img class="thumb"', dom)) == min(60, res.images)
    assert len(re.findall(r'<img class="plot"', dom)) == len(PLOT_NAMES)
    cls = sorted(set(df["label_name"]))[1]
    rows = gallery_rows(df, per_category=300)
    want = int(((rows["category"] == "mislabeled") & (rows["label_name"] == cls)).sum())
    dom, console = render(res.path, f"#category=mislabeled&class={cls}")
    assert console == [] and attr(dom, "data-matching") == want
    assert len(re.findall(r'<img class="thumb"', dom)) == min(60, want)


def test_cards_carry_the_reason_and_margin_history(page):
    run_dir, res = page
    data = json.loads(re.search(r'<script type="application/json" id="memscan-data">(.*?)</script>',
                                res.path.read_text(), re.S).group(1))
    df = read_report(run_dir).to_pandas().set_index("sample_id")
    traj = pd.read_parquet(run_dir / "trajectories")
    epochs = traj["epoch"].nunique()
    for c in data["cards"]:
        assert c["reason"] == df.loc[c["sample_id"], "reason"] != ""
        want = traj[traj["sample_id"] == c["sample_id"]].sort_values("epoch")["margin"].round(2).tolist()
        assert len(c["margins"]) == epochs and c["margins"] == pytest.approx(want, abs=0.006)


@needs_browser
def test_reason_and_sparkline_render_in_chromium(page):
    _, res = page
    dom, console = render(res.path, "#category=all&size=30")
    assert console == []
    shown = attr(dom, "data-shown")
    assert shown == min(30, res.images) > 0
    assert dom.count('<div class="reason">') == shown and dom.count('<svg class="spark"') == shown
    assert "<title>margin per epoch: " in dom


@needs_browser
def test_thousand_cards_are_paged(digits_run, tmp_path):
    """1,200 flagged samples: the page renders one page of cards at a time (here page 20 of 20)."""
    _, run_dir = digits_run
    df = read_report(run_dir).to_pandas()
    big = df.sample(1200, replace=True, random_state=0).reset_index(drop=True)
    big["path"] = [f"{p}#{i}" for i, p in enumerate(big["path"])]   # not on disk: placeholders
    big["category"] = np.where(np.arange(1200) % 2, "mislabeled", "atypical")
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    rewrite_report(copy, copy / "report.parquet", big)
    res = write_html(copy, per_category=600)
    assert res.images == 1200
    dom, console = render(res.path, "#category=all&page=20&size=60")
    assert console == []
    assert attr(dom, "data-matching") == 1200 and attr(dom, "data-shown") == 60
    assert "1141–1200 of 1200 (page 20/20)" in dom
    assert dom.count('class="noimg"') == 60


HOSTILE = ["<!--<script>", "</script>", 'say "hi"', "it's", "&amp;", "[/]", "two\nlines", "\u2028sep"]


def test_embedded_json_is_inert():
    """Inside <script>, "<!--<script>" in a name made the HTML parser swallow the app script."""
    obj = {"names": HOSTILE, "n": -0.5}
    text = script_json(obj)
    assert not re.search("[<>&\u2028\u2029]", text) and json.loads(text) == obj


@pytest.fixture(scope="module")
def hostile_page(tmp_path_factory):
    """A report (written directly, no training) whose paths and class names are all hostile."""
    n = 4 * len(HOSTILE)
    labels = [HOSTILE[i % len(HOSTILE)] for i in range(n)]
    df = frame([f"{labels[(i + 1) % n]}/{i}.png" for i in range(n)], labels)
    df["category"] = np.array(list(GALLERY))[np.arange(n) % len(GALLERY)]
    curves = {"weight_norm": [1.0, 1.2], "grad_mean": [0.1, 0.05], "train_acc": [0.5, 0.7], "loss_mean": [1.0, 0.6]}
    rep = write_report(tmp_path_factory.mktemp("hostile") / "run" / "report.parquet", df, curves=curves)
    return df, write_html(rep)


def test_hostile_names_stay_data(hostile_page):
    df, res = hostile_page
    text = res.path.read_text()
    assert SIGNATURE in text.encode()[:4096]
    assert res.images == len(df) and len(res.missing) == len(df)
    assert text.count("<script") == text.count("</script>") == 3             # no name opened or closed a script
    data = re.search(r'<script type="application/json" id="memscan-data">(.*?)</script>', text, re.S).group(1)
    assert [c["path"] for c in json.loads(data)["cards"]] == gallery_rows(df, per_category=300)["path"].tolist()


@needs_browser
def test_hostile_names_render_as_text_in_chromium(hostile_page):
    df, res = hostile_page
    dom, console = render(res.path, "#category=mislabeled&size=240")
    assert console == [] and not re.search(r'<html[^>]*data-js-errors', dom)
    shown = df[df["category"] == "mislabeled"]
    assert attr(dom, "data-matching") == attr(dom, "data-shown") == dom.count('class="card ') == len(shown)
    for p in shown["path"]:
        assert f'<div class="path">{html.escape(p, quote=False)}</div>' in dom
    classes = sorted(set(df["label_name"]))
    assert all(f">{html.escape(c, quote=False)}</option>" in dom for c in classes)
    cls = classes[0]
    dom, console = render(res.path, f"#category=all&class={quote(cls)}")     # a hostile class as a link filter
    assert console == [] and attr(dom, "data-matching") == int((df["label_name"] == cls).sum())


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    return sync_playwright


def _launch(p):
    """Debian's chromium under Playwright, with the flags this closed network needs (no background traffic)."""
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-quic", "--no-first-run"])


def _download_decisions(pg, folder):
    """Click the page's download button; the saved decisions.csv."""
    with pg.expect_download() as dl:
        pg.locator("#download").click()
    assert dl.value.suggested_filename == "decisions.csv"
    saved = folder / "decisions.csv"
    dl.value.save_as(saved)
    return saved


@needs_browser
def test_review_with_clicks_and_keys_survives_a_reload_and_downloads(page, tmp_path):
    """Review three cards (a click, two keys, a note), reload: the decisions are kept; decisions.csv has them."""
    import csv as csv_mod
    run_dir, res = page
    sync_playwright = _playwright()
    errors = []
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            ctx = browser.new_context(accept_downloads=True)
            pg = ctx.new_page()
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            pg.on("dialog", lambda d: d.accept("looks blurry"))
            pg.goto(res.path.resolve().as_uri() + "#category=all&size=30")
            cards = pg.locator("#gallery .card")
            assert cards.count() >= 3
            data = json.loads(pg.locator("#memscan-data").text_content())
            shown = data["cards"][:3]
            cards.nth(0).locator("button.keep").click()                  # a click: keep card 1
            pg.keyboard.press("j")                                        # to card 2
            pg.keyboard.press("x")                                        # remove it (moves on to card 3)
            third = shown[2]
            target = next(c for c in data["all_classes"] if c != third["label_name"])
            cards.nth(2).locator("select.relabel").select_option(target)  # relabel card 3 from its menu
            pg.keyboard.press("k")                                        # back to card 2
            pg.keyboard.press("n")                                        # a note on it (the dialog answers)
            assert pg.locator("body").get_attribute("data-decisions") == "3"
            pg.reload()
            assert pg.locator("body").get_attribute("data-decisions") == "3"
            badges = [cards.nth(i).locator(".decision").text_content() for i in range(3)]
            assert badges == ["kept", "removed", "→ " + target]
            saved = _download_decisions(pg, tmp_path)
        finally:
            browser.close()
    assert errors == []
    rows = list(csv_mod.DictReader(saved.open(encoding="utf-8", newline="")))
    want = sorted([{"path": shown[0]["path"], "given": shown[0]["label_name"], "decision": "keep", "new_label": "",
                    "note": ""},
                   {"path": shown[1]["path"], "given": shown[1]["label_name"], "decision": "remove", "new_label": "",
                    "note": "looks blurry"},
                   {"path": third["path"], "given": third["label_name"], "decision": "relabel", "new_label": target,
                    "note": ""}], key=lambda r: r["path"])
    assert rows == want
    from memscan.decisions import read_decisions
    assert {p: d.decision for p, d in read_decisions(saved).items()} == {r["path"]: r["decision"] for r in want}


@needs_browser
def test_decisions_round_trip_hostile_paths(tmp_path):
    """Paths that are CSV or JavaScript trouble (quotes, commas, line breaks, "__proto__") survive the page's
    decisions.csv exactly, and memscan reads the file back."""
    import csv as csv_mod
    from memscan.decisions import read_decisions
    paths = ["__proto__", 'a,"b"\nc.png', "=cmd.png", " lead.png", "x/ü.png"]
    df = frame(paths, ["cat", "dog", "cat", "dog", "cat"])
    rep = write_report(tmp_path / "run" / "report.parquet", df)
    res = write_html(rep)
    sync_playwright = _playwright()
    errors = []
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            pg = browser.new_context(accept_downloads=True).new_page()
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(res.path.resolve().as_uri() + "#category=all&size=30")
            for _ in range(len(paths)):
                pg.keyboard.press("a")                  # keep, and on to the next card
            assert pg.locator("body").get_attribute("data-decisions") == str(len(paths))
            saved = _download_decisions(pg, tmp_path)
        finally:
            browser.close()
    assert errors == []
    rows = list(csv_mod.DictReader(saved.open(encoding="utf-8", newline="")))
    assert sorted(r["path"] for r in rows) == sorted(paths)
    assert set(read_decisions(saved)) == set(paths)
