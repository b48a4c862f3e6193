import json
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from memscan.check import check_report, parse_class_max, parse_spec
from memscan.ci_formats import junit_xml, markdown_summary
from memscan.cli import main
from memscan.diff import diff_reports
from memscan.errors import ConfigError, ReportError
from memscan.report import read_report

from helpers import rewrite_report


def frame(n=100, flagged=(), classes=("a", "b"), relabel=None):
    """A report-shaped frame: n samples alternating classes; ``flagged`` indices are 'mislabeled'
    with mislabel_score rising with the index (so the last flagged is the top offender)."""
    labels = [classes[i % len(classes)] for i in range(n)]
    cat = np.array(["ok"] * n, dtype=object)
    cat[list(flagged)] = "mislabeled"
    score = np.linspace(0, 0.5, n)
    score[list(flagged)] = 0.9 + np.arange(len(flagged)) / 1000
    df = pd.DataFrame({"path": [f"img/{i:03d}.png" for i in range(n)], "label_name": labels,
                       "pred_name": labels, "p_pred": 0.9, "mislabel_score": score, "category": cat})
    for i, lab in (relabel or {}).items():
        df.loc[i, "label_name"] = lab
    return df


def test_gate_values_limits_and_boundaries():
    df = frame(flagged=[0, 2, 4, 1, 3])          # 3 in class a (even), 2 in class b
    r = check_report(df, max_mislabeled=0.05, max_count=4, class_max={"a": 0.05, "b": 0.05}, top=2)
    g = {x.name: x for x in r.gates}
    assert r.flagged == 5 and r.samples == 100 and not r.passed
    assert g["max-mislabeled"].passed and g["max-mislabeled"].value == pytest.approx(0.05)   # equal = pass
    assert not g["max-count"].passed and "over by 1" in g["max-count"].message
    assert not g["class-max[a]"].passed and g["class-max[a]"].value == pytest.approx(3 / 50)
    assert "over by 1.00 points" in g["class-max[a]"].message
    assert g["class-max[b]"].passed and g["class-max[b]"].value == pytest.approx(2 / 50)
    # offenders: the most suspicious first, at most `top`, only from the failing class
    assert [o["path"] for o in g["class-max[a]"].offenders] == ["img/004.png", "img/002.png"]
    assert [x.name for x in r.failed] == ["max-count", "class-max[a]"]
    tight = check_report(df, max_mislabeled=0.04)
    assert not tight.passed and "> limit 4.00%: over by 1.00 points (1 samples)" in tight.gates[0].message
    assert check_report(frame(), max_count=0).passed          # nothing flagged passes a zero limit


@pytest.mark.parametrize("kw, match", [
    ({}, "no threshold given"),
    ({"max_mislabeled": 1.5}, "between 0 and 1"),
    ({"max_mislabeled": "x"}, "not a number"),
    ({"max_count": -1}, "whole number"),
    ({"max_count": 2.5}, "whole number"),
    ({"max_new": 3}, "needs --baseline"),
    ({"class_max": {"zebra": 0.1}}, "classes: a, b"),
])
def test_gate_bad_input(kw, match):
    with pytest.raises(ConfigError, match=match):
        check_report(frame(), **kw)


def test_parse_spec_and_class_max():
    assert parse_spec("max-mislabeled=0.02, max-count=50 class-max=cat:0.05") == {
        "max_mislabeled": 0.02, "max_count": 50, "class_max": {"cat": 0.05}}
    assert parse_spec(["max-count=3", "baseline=old.parquet", "max-new=0"]) == {
        "max_count": 3, "baseline": "old.parquet", "max_new": 0}
    assert parse_class_max(["cat=0.05", "dog=0.1,bird=0"]) == {"cat": 0.05, "dog": 0.1, "bird": 0.0}
    for bad, match in (("max-mislabelled=0.1", "max-mislabeled, max-count, class-max"),
                       ("max-count", "KEY=VALUE"), ("max-mislabeled=7", "between 0 and 1"),
                       ("max-new=2", "needs baseline"), ("", "empty")):
        with pytest.raises(ConfigError, match=match):
            parse_spec(bad)
    with pytest.raises(ConfigError, match="CLASS=FRACTION"):
        parse_class_max("cat")


def test_diff_added_removed_relabelled_new_and_resolved():
    old = frame(n=10, flagged=[1, 2, 3])
    new = frame(n=12, flagged=[2, 5, 11], relabel={3: "a", 7: "a"})   # 3 relabelled (and resolved), 7 relabelled
    new = new[new["path"] != "img/001.png"]                          # a flagged sample removed
    d = diff_reports(old, new)
    assert sorted(r["path"] for r in d.new_suspects) == ["img/005.png", "img/011.png"]
    assert {r["path"]: r["was"] for r in d.new_suspects} == {"img/005.png": "ok", "img/011.png": None}
    res = {r["path"]: r.get("removed") for r in d.resolved_suspects}
    assert res == {"img/001.png": True, "img/003.png": False}
    assert {r["path"]: (r["old_label"], r["label_name"]) for r in d.relabelled} == {
        "img/003.png": ("b", "a"), "img/007.png": ("b", "a")}
    assert d.added == ["img/010.png", "img/011.png"] and d.removed == ["img/001.png"]
    assert d.counts() == {"new_suspects": 2, "resolved_suspects": 2, "relabelled": 2, "added": 2,
                          "removed": 1, "old_suspects": 3, "suspects": 3}
    assert json.loads(json.dumps(d.to_dict()))["watched"] == ["mislabeled"]   # JSON-able as is


def test_diff_refuses_unrelated_reports():
    other = frame(n=5)
    other["path"] = other["path"].str.replace("img/", "elsewhere/")
    with pytest.raises(ReportError, match="share no sample path"):
        diff_reports(frame(n=5), other)


def test_baseline_gate_counts_only_new_suspects():
    old = frame(flagged=[1, 2, 3])
    new = frame(flagged=[1, 2, 3, 50, 60])
    r = check_report(new, baseline=old, max_new=1)
    assert not r.passed and r.gates[0].name == "max-new" and r.gates[0].value == 2
    assert {o["path"] for o in r.gates[0].offenders} == {"img/050.png", "img/060.png"}
    assert r.diff["new_suspects"] == 2 and r.diff["resolved_suspects"] == 0
    assert check_report(new, baseline=old, max_new=2).passed


def test_junit_and_markdown():
    r = check_report(frame(flagged=[0, 2, 4]), max_mislabeled=0.01, max_count=10, top=2)
    root = ET.fromstring(junit_xml(r))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["max-mislabeled", "max-count"]
    assert suite.get("tests") == "2" and suite.get("failures") == "1" and root.get("failures") == "1"
    fail = cases[0].find("failure")
    assert fail is not None and cases[1].find("failure") is None
    assert "img/004.png" in fail.text and "3.00%" in fail.get("message")
    md = markdown_summary(r)
    assert md.startswith("## memscan data check: ❌ failed (1 of 2 gates)")
    assert "| `max-mislabeled` | **FAIL** | 3.00% | 1.00% |" in md and "`img/004.png`" in md


@pytest.fixture(scope="module")
def edited(digits_run, tmp_path_factory):
    """The real run's report plus an edited copy: two more samples flagged, one relabelled."""
    _, run_dir = digits_run
    df = read_report(run_dir).to_pandas()
    new = df.copy()
    ok = np.flatnonzero(new["category"].to_numpy() == "ok")[:2]
    new.loc[ok, "category"] = "mislabeled"
    new.loc[ok[0], "mislabel_score"] = 2.0
    classes = sorted(set(df["label_name"]))
    new.loc[5, "label_name"] = next(c for c in classes if c != df.loc[5, "label_name"])
    dest = rewrite_report(run_dir, tmp_path_factory.mktemp("edited") / "report.parquet", new)
    return run_dir, dest, df.loc[ok, "path"].tolist()


def test_check_cli_exit_codes_and_files(edited, tmp_path, capsys, monkeypatch):
    run_dir, _, _ = edited
    df = read_report(run_dir).to_pandas()
    k = int((df["category"] == "mislabeled").sum())
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["check", str(run_dir), "--max-count", str(k)]) == 0
    assert "data check passed" in capsys.readouterr().out
    rc = main(["check", str(run_dir), "--max-count", str(k - 1), "--junit", str(tmp_path / "j.xml"),
               "--summary-md", str(tmp_path / "s.md")])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL max-count" in out and "over by 1" in out
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "1"
    assert (tmp_path / "s.md").read_text() in summary.read_text()          # appended to the job summary
    assert summary.read_text().count("## memscan data check") == 2
    assert main(["check", str(run_dir)]) == 2                                # no threshold: usage error
    assert main(["check", str(run_dir), "--max-count", "abc"]) == 2          # click's own usage error
    assert main(["check", str(tmp_path / "nope"), "--max-count", "1"]) == 2
    assert "no report at" in capsys.readouterr().err
    assert main(["check", str(run_dir), "--max-mislabeled", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == check_report(run_dir, max_mislabeled=1).to_dict()


def test_summary_md_never_replaces_a_users_markdown(edited, tmp_path, capsys):
    """A note with a '## memscan setup' heading passed the signature check and was overwritten (data loss)."""
    run_dir, _, _ = edited
    notes = tmp_path / "NOTES.md"
    notes.write_text("# Project notes\n\n## memscan setup\n\nWe gate CI with memscan.\n")
    before = notes.read_text()
    assert main(["check", str(run_dir), "--max-mislabeled", "1", "--summary-md", str(notes)]) == 2
    assert "was not written by memscan" in " ".join(capsys.readouterr().err.split())
    assert notes.read_text() == before
    ours = tmp_path / "s.md"
    assert main(["check", str(run_dir), "--max-mislabeled", "1", "--summary-md", str(ours)]) == 0
    assert main(["check", str(run_dir), "--max-mislabeled", "1", "--summary-md", str(ours)]) == 0   # its own


def test_check_baseline_and_diff_cli(edited, capsys):
    run_dir, new, added = edited
    rc = main(["check", str(new), "--baseline", str(run_dir), "--max-new", "1"])
    out = capsys.readouterr().out
    assert rc == 1 and "2 new suspects since the baseline" in out and "FAIL max-new" in out
    assert main(["check", str(new), "--baseline", str(run_dir), "--max-new", "2"]) == 0
    capsys.readouterr()
    assert main(["diff", str(run_dir), str(new), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == json.loads(json.dumps(diff_reports(run_dir, new).to_dict()))
    assert [r["path"] for r in got["new_suspects"]] == added          # the one scored 2.0 first
    assert len(got["relabelled"]) == 1
    assert main(["diff", str(run_dir), str(new)]) == 0
    out = capsys.readouterr().out
    assert "new suspects 2" in out and "relabelled 1" in out


def test_run_check_gates_after_the_run(digits_run, tmp_path, capsys):
    data, _ = digits_run
    args = ["run", str(data), "--max-epochs", "2", "--min-epochs", "1", "--batch-size", "32", "--image-size", "8",
            "--cache-dir", str(tmp_path / "cache"), "-q"]
    rc = main(args + ["--out", str(tmp_path / "bad"), "--check", "max-mislabelled=0.1"])
    assert rc == 2 and not (tmp_path / "bad").exists()          # a typo fails before any training
    rc = main(args + ["--out", str(tmp_path / "r"), "--check", "max-count=0", "--json", "--html"])
    summary = json.loads(capsys.readouterr().out)
    flagged = summary["categories"]["mislabeled"]
    assert rc == (1 if flagged else 0)
    saved = json.loads((tmp_path / "r" / "check.json").read_text())
    assert saved == summary["check"] and saved["flagged"] == flagged
    assert ET.parse(tmp_path / "r" / "check.xml").getroot().tag == "testsuites"
    assert (tmp_path / "r" / "check.md").read_text().startswith("## memscan data check")
    assert summary["html"] == str(tmp_path / "r" / "report.html") and (tmp_path / "r" / "report.html").exists()
