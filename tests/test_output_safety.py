"""Hostile and careless names in what memscan prints and writes: CSV, the terminal tables, path lists,
JUnit XML and Markdown (issue 11). Reports here are written directly (no training)."""
import csv
import io
import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from memscan.check import check_report
from memscan.ci_formats import JUNIT_SIGNATURE, MARKDOWN_SIGNATURE, append_step_summary, junit_xml, markdown_summary
from memscan.cli import main
from memscan.errors import ConfigError, ReportError
from memscan.files import check_output_file
from memscan.html_report import write_html
from memscan.rank import sample_files
from memscan.report import read_frame as load_frame
from memscan.text import printable
from memscan.report import META_KEY

from helpers import report_meta

FORMULA = '=HYPERLINK("http://evil.example","x")'
HOSTILE = ["<!--<script>", "</script>", 'say "hi"', "it's", "&amp;", "[/]", "[bold]b", "two\nlines",
           "esc\x1b[31mred", "nul\x00ff\x0cbell\x07", "del\x7fc1\x9b", "pipe|tick`s", "back\\"]


def frame(paths, labels, preds=None):
    """A report-shaped frame, all samples flagged mislabeled, the first the most suspicious."""
    n = len(paths)
    score = np.linspace(1, 0.5, n)
    return pd.DataFrame({"sample_id": np.arange(n), "path": paths, "label_name": labels,
                         "pred_name": preds if preds is not None else labels[::-1], "p_pred": 0.9, "p_given": 0.1,
                         "mislabel_score": score, "memorization_score": score, "atypicality_score": score,
                         "aum": -score, "csg": score, "category": "mislabeled"})


def write_report(dest, df, dataset="default", **meta):
    """``df`` as report.parquet with complete memscan metadata (``dataset=None``: none at all) plus ``meta``."""
    meta = {**report_meta(location=str(dest.parent / "data"), classes=sorted(set(df["label_name"])), n=len(df)),
            **meta}
    if dataset is None:
        del meta["dataset"]
    elif dataset != "default":
        meta["dataset"] = dataset
    dest.parent.mkdir(parents=True, exist_ok=True)
    t = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(t.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), dest)
    return dest


@pytest.fixture
def wide(monkeypatch):
    """The rank command's console, wide enough that no name is folded across lines."""
    monkeypatch.setattr("memscan.cli.rank.console", Console(width=400))


@pytest.fixture
def hostile(tmp_path):
    labels = [HOSTILE[(i + 5) % len(HOSTILE)] for i in range(len(HOSTILE))]        # every name a class, "[/]" first
    return write_report(tmp_path / "run[bold]x" / "report.parquet", frame([f"{h}.png" for h in HOSTILE], labels))


def test_printable_escapes_controls_only():
    assert printable("a\x1b[31m\x00\n\x7f\x9bé[/]") == "a\\x1b[31m\\x00\\n\\x7f\\x9bé[/]"
    assert printable("a\tb\nc\x0c", keep="\t\n") == "a\tb\nc\\x0c"
    # a right-to-left override makes "cat\u202egnp.exe" display as "catexe.png"
    assert printable("cat\u202egnp.exe") == "cat\\u202egnp.exe" and printable("\u2066x\u2069") == "\\u2066x\\u2069"


def test_csv_neutralises_formulas_but_keeps_numbers(tmp_path, capsys):
    paths = [FORMULA, "+1.png", "-cmd.png", "@SUM(A1).png", "\tx.png", "\rx.png", "ok.png"]
    rep = write_report(tmp_path / "r" / "report.parquet", frame(paths, ["=cat", "dog", "-x", "a", "b", "c", "d"]))
    assert main(["rank", str(rep), "--by", "aum", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["path"] for r in rows} == {"'" + p for p in paths[:-1]} | {"ok.png"}
    assert {r["label_name"] for r in rows if r["label_name"].lstrip("'").startswith(("=", "-"))} == {"'=cat", "'-x"}
    assert all(r["score"].startswith("-") and float(r["score"]) < 0 for r in rows)     # numbers stay numbers
    assert main(["rank", str(rep), "--format", "csv", "--raw-csv"]) == 0
    raw = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["path"] for r in raw} == set(paths)
    assert main(["rank", str(rep), "--summary", "--format", "csv"]) == 0
    summary = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert "'=cat" in {r["class"] for r in summary} and "'-x" in {r["most_predicted_instead"] for r in summary}


def test_tables_show_names_as_text(hostile, wide, capsys):
    for args in ([], ["--summary"]):
        assert main(["rank", str(hostile), *args]) == 0, capsys.readouterr().err   # a class "[/]" crashed --summary
        out = capsys.readouterr().out
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", out)             # no raw escape sequences
        assert "esc\\x1b[31mred" in out and "[/]" in out and "[bold]b" in out     # markup shown, not applied
        assert re.search(r"two\\(n|x0a)lines", out) and "back\\" in out and "run[bold]x" in out   # title too


def test_paths_refuse_line_breaks_and_paths0_lists_any_name(hostile, tmp_path, capsys):
    assert main(["rank", str(hostile), "--format", "paths"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "line break" in err and "--format paths0" in err and "two\\nlines" in err
    assert main(["rank", str(hostile), "-0"]) == 2
    assert "NUL character" in capsys.readouterr().err          # no file has one: it would split the entry
    names = [h for h in HOSTILE if "\0" not in h]
    rep = write_report(tmp_path / "r" / "report.parquet", frame([f"{h}.png" for h in names], names))
    want = sorted(str(tmp_path / "r" / "data" / f"{h}.png") for h in names)
    for args in (["--format", "paths0"], ["-0"]):
        assert main(["rank", str(rep), *args]) == 0
        out = capsys.readouterr().out
        assert out.endswith("\0") and sorted(out[:-1].split("\0")) == want


def test_paths_refuse_parquet_bytes(tmp_path, capsys):
    data = tmp_path / "images.parquet"
    data.write_bytes(b"PAR1")
    rep = write_report(tmp_path / "r" / "report.parquet", frame(["a.png", "b.png"], ["x", "y"]),
                       dataset=report_meta(location=str(data), source="parquet-bytes", classes=["x", "y"],
                                           n=2)["dataset"])
    for fmt in ("paths", "paths0"):
        assert main(["rank", str(rep), "--format", fmt]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"inside the Parquet file '{data}'" in err and "--format csv" in err
    assert main(["rank", str(rep), "--format", "csv"]) == 0


def test_incomplete_report_metadata_is_a_report_error(tmp_path, capsys):
    df = frame(["a.png", "b.png"], ["x", "y"])
    rep = write_report(tmp_path / "r" / "report.parquet", df, dataset=None)
    with pytest.raises(ReportError, match=re.escape(str(rep))):
        sample_files(rep)
    with pytest.raises(ReportError, match=re.escape(str(rep))):
        write_html(rep)
    assert main(["rank", str(rep), "--format", "paths"]) == 2
    assert "dataset" in capsys.readouterr().err
    thin = write_report(tmp_path / "t" / "report.parquet", df.drop(columns=["p_given"]))
    with pytest.raises(ReportError, match="lacks the report column"):
        load_frame(thin, ["path", "p_given"])
    assert main(["rank", str(thin)]) == 2


def hostile_check():
    paths = [f"{h}.png" for h in HOSTILE] + ["]]>x.png", "nonchar\ufffe.png"]
    labels = [("<b>a\x00|b", "c\x1bd")[i % 2] for i in range(len(paths))]
    return check_report(frame(paths, labels), max_count=0, class_max={"c\x1bd": 0.0}, top=len(paths))


def test_junit_xml_parses_with_control_characters():
    r = hostile_check()
    root = ET.fromstring(junit_xml(r))                     # was: "not well-formed (invalid token)"
    cases = root.find("testsuite").findall("testcase")
    assert [c.get("name") for c in cases] == ["max-count", "class-max[c\\x1bd]"]
    text = cases[0].find("failure").text
    assert "esc\\x1b[31mred.png" in text and "nul\\x00ff\\x0cbell\\x07.png" in text and "]]>x.png" in text
    offenders = text.split("top offenders:\n", 1)[1].strip().splitlines()
    assert len(offenders) == len(HOSTILE) + 2               # a line break in a name does not split its line


def test_ci_files_carry_their_signature():
    """What lets ``files.check_output_file`` replace a file memscan wrote, and only such a file."""
    r = hostile_check()
    assert JUNIT_SIGNATURE in junit_xml(r).encode()[:4096] and MARKDOWN_SIGNATURE in markdown_summary(r).encode()[:4096]


def test_markdown_cells_stay_cells():
    r = hostile_check()
    md = markdown_summary(r)
    rows = [line for line in md.splitlines() if line.startswith("| `") and ".png" in line]
    assert len(rows) == sum(len(g.offenders) for g in r.failed)     # one row per offender: no name broke the table
    for row in rows:
        assert len(re.findall(r"(?<!\\)\|", row)) == 6, row
    assert "| ``pipe\\|tick`s.png`` |" in md                # a fence longer than the backticks inside
    assert "| `two\\nlines.png` |" in md and "| \\<b\\>a\\\\x00\\|b |" in md and "\x1b" not in md


def test_ci_writers_refuse_folders(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match=re.escape(f"--junit '{tmp_path}' is a folder; give a file path, e.g. "
                                                    f"'{tmp_path / 'check.xml'}'")):
        check_output_file(tmp_path, signature=JUNIT_SIGNATURE, what="--junit", example="check.xml")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_file(tmp_path / "file" / "check.xml", signature=JUNIT_SIGNATURE)
    assert check_output_file(tmp_path / "sub" / "ok.xml", signature=JUNIT_SIGNATURE).parent.is_dir()
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))
    with pytest.raises(ConfigError, match=re.escape(f"$GITHUB_STEP_SUMMARY='{tmp_path}' is a folder, not a file; "
                                                    "unset it or point it to a file")):
        append_step_summary("x")
    rep = write_report(tmp_path / "r" / "report.parquet", frame(["a.png", "b.png"], ["x", "y"]))
    assert main(["check", str(rep), "--max-count", "5"]) == 2                    # was 70: internal error
    assert "GITHUB_STEP_SUMMARY" in capsys.readouterr().err
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    assert main(["check", str(rep), "--max-count", "5", "--junit", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
