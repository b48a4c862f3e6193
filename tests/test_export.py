"""`memscan export`: Label Studio tasks and CSV of the suspects."""
import csv
import io
import json

import pytest

from memscan.cli import EXIT_CODES, main
from memscan.errors import ConfigError, OutputExistsError
from memscan.export import label_studio_config, label_studio_tasks, suspects_csv, write_export
from memscan.report import read_frame


def test_label_studio_tasks_carry_the_suggestion_as_a_pre_annotation(digits_run):
    _, run_dir = digits_run
    df = read_frame(run_dir)
    flagged = df[df["category"] != "ok"].sort_values("mislabel_score", ascending=False, kind="stable")
    tasks = label_studio_tasks(run_dir)
    assert len(tasks) == len(flagged) > 0
    first, row = tasks[0], flagged.iloc[0]
    assert first["data"]["path"] == row["path"] and first["data"]["reason"] == row["reason"]
    assert first["data"]["image"] == "/data/local-files/?d=" + row["path"]
    (result,) = first["predictions"][0]["result"]
    assert result == {"from_name": "label", "to_name": "image", "type": "choices",
                      "value": {"choices": [row["suggested_label_name"]]}}
    assert first["predictions"][0]["score"] == pytest.approx(row["mislabel_score"])
    ranks = [t["data"]["memscan_rank"] for t in tasks]
    assert ranks == sorted(ranks)
    only = label_studio_tasks(run_dir, category="mislabeled", top=2, image_url="https://h/{path}?x=1",
                              from_name="c", to_name="i")
    assert len(only) == min(2, int((df["category"] == "mislabeled").sum()))
    assert only[0]["data"]["image"].startswith("https://h/") and only[0]["predictions"][0]["result"][0]["to_name"] == "i"
    with pytest.raises(ConfigError, match="must contain"):
        label_studio_tasks(run_dir, image_url="https://h/")


def test_label_studio_config_matches_the_tasks():
    cfg = label_studio_config(["cat", 'say "hi"'])
    assert '<Choices name="label" toName="image"' in cfg and '<Image name="image" value="$image"/>' in cfg
    assert "<Choice value='say \"hi\"'/>" in cfg


def test_csv_export_is_spreadsheet_safe(digits_run):
    _, run_dir = digits_run
    rows = list(csv.DictReader(io.StringIO(suspects_csv(run_dir, top=3))))
    assert [int(r["memscan_rank"]) for r in rows] == sorted(int(r["memscan_rank"]) for r in rows)
    assert len(rows) == 3 and set(rows[0]) >= {"path", "suggested_label_name", "reason"}


def test_export_files_replace_only_earlier_exports(digits_run, tmp_path, capsys):
    data, run_dir = digits_run
    out = tmp_path / "suspects.json"
    write_export(run_dir, out, "label-studio")
    assert json.loads(out.read_text()) == label_studio_tasks(run_dir)
    write_export(run_dir, out, "label-studio", top=1)                      # its own file: replaced
    assert len(json.loads(out.read_text())) == 1
    foreign = tmp_path / "notes.json"
    foreign.write_text("[1]")
    with pytest.raises(OutputExistsError):
        write_export(run_dir, foreign, "label-studio")
    assert foreign.read_text() == "[1]"
    with pytest.raises(ConfigError, match="part of the dataset"):
        write_export(run_dir, data / "c0" / "x.csv", "csv")
    assert main(["export", str(run_dir), "--format", "csv", "--top", "2"]) == 0
    assert capsys.readouterr().out.startswith("memscan_rank,path,")
    assert main(["export", str(run_dir), "--config"]) == 0
    assert "<View>" in capsys.readouterr().out
    assert main(["export", str(run_dir), "--format", "xml"]) == EXIT_CODES[ConfigError]


def test_export_replaces_its_own_empty_file_and_never_a_lookalike(digits_run, tmp_path):
    data, run_dir = digits_run
    empty = tmp_path / "none.json"
    empty.write_text("[]")                                                  # what an export with no suspects writes
    write_export(run_dir, empty, "label-studio", top=1)                     # "[]" was an empty export: replaced
    assert len(json.loads(empty.read_text())) == 1
    # the signature somewhere in a file is not enough: it must be how the file starts
    notes = tmp_path / "notes.json"
    notes.write_text('My notes. memscan writes [{"data": {"memscan": ... at the start\nImportant\n')
    script = tmp_path / "analyze.csv"
    script.write_text("#!/usr/bin/env python\n# reads memscan export: columns memscan_rank, path\n")
    for f, fmt in ((notes, "label-studio"), (script, "csv")):
        before = f.read_text()
        with pytest.raises(OutputExistsError):
            write_export(run_dir, f, fmt)
        assert f.read_text() == before


def test_damaged_reports_fail_in_one_line(digits_run, tmp_path):
    import math
    import os
    from memscan.errors import ReportError
    from helpers import rewrite_report
    data, run_dir = digits_run
    df = read_frame(run_dir)
    nulls = df.copy()
    nulls.loc[nulls.index[:3], "path"] = None
    bad = rewrite_report(run_dir, tmp_path / "nullpath" / "report.parquet", nulls)
    with pytest.raises(ReportError, match="damaged: its path column holds 3 empty cell"):
        write_export(bad.parent, tmp_path / "x.json", "label-studio")
    assert main(["export", str(bad.parent), "-n", "1"]) == EXIT_CODES[ReportError]
    inf = df.copy()
    inf["mislabel_score"] = math.inf
    bad_inf = rewrite_report(run_dir, tmp_path / "inf" / "report.parquet", inf)
    out = write_export(bad_inf.parent, tmp_path / "inf.json", "label-studio", top=2)
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "report.parquet")
    with pytest.raises(ReportError, match="not a regular file"):             # a pipe would block the read
        label_studio_tasks(fifo)
