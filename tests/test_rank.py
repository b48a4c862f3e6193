import csv
import io
import json

import numpy as np
import pytest

from memscan.cli import main
from memscan.config import RunConfig
from memscan.errors import ConfigError, ReportError
from memscan.pipeline import run
from memscan.rank import class_summary, rank_indices, ranked_records, select
from memscan.report import read_frame as load_frame
from memscan.run_folder import latest_run

from helpers import digits_folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    data = digits_folder(tmp_path_factory.mktemp("d") / "digits", per_class=25, classes=3, flip_every=7)
    cfg = RunConfig(max_epochs=3, batch_size=32, image_size=8, augment="crop", min_epochs=1)
    return run(data, cfg, out=tmp_path_factory.mktemp("runs") / "memscan-runs" / "digits-1").out_dir


def test_rank_indices_directions():
    v = np.array([0.2, 0.9, 0.5, 0.9])
    assert rank_indices(v).tolist() == [1, 3, 2, 0]
    assert rank_indices(v, descending=False).tolist() == [0, 2, 1, 3]


def test_select_filters_and_order(run_dir):
    df = load_frame(run_dir)
    top = select(df, by="mislabel", top=10)
    assert len(top) == 10 and top["rank"].tolist() == list(range(1, 11))
    assert top["mislabel_score"].is_monotonic_decreasing
    aum = select(df, by="aum", top=5)
    assert aum["aum"].is_monotonic_increasing                      # low margin first
    cls = select(df, class_name="c1")
    assert set(cls["label_name"]) == {"c1"} and len(cls) == (df["label_name"] == "c1").sum()
    cat = select(df, category="ok")
    assert set(cat["category"]) <= {"ok"}
    with pytest.raises(ConfigError, match="mislabel, memorization"):
        select(df, by="nope")
    with pytest.raises(ConfigError, match="c0, c1, c2"):
        select(df, class_name="zebra")


def test_json_output_equals_api(run_dir, capsys):
    assert main(["rank", str(run_dir), "--top", "7", "--by", "csg", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == ranked_records(run_dir, by="csg", top=7)


def test_csv_paths_and_table(run_dir, capsys):
    assert main(["rank", str(run_dir), "--top", "4", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert main(["rank", str(run_dir / "report.parquet"), "--top", "3", "--format", "paths"]) == 0
    paths = capsys.readouterr().out.split()
    assert len(paths) == 3 and all(p.endswith(".png") and "/c" in p for p in paths)
    from pathlib import Path
    assert all(Path(p).exists() for p in paths)
    assert main(["rank", str(run_dir), "--top", "3", "-0"]) == 0
    assert capsys.readouterr().out == "".join(p + "\0" for p in paths)      # the same files, NUL-separated
    assert main(["rank", str(run_dir), "--top", "3"]) == 0
    assert "3 samples by mislabel" in " ".join(capsys.readouterr().out.split())


def test_summary(run_dir, capsys):
    rows = class_summary(load_frame(run_dir))
    assert [r["class"] for r in rows] == ["c0", "c1", "c2"]
    assert sum(r["samples"] for r in rows) == len(load_frame(run_dir))
    assert main(["rank", str(run_dir), "--summary", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["per_class"] == rows
    df = load_frame(run_dir)
    assert out["classes"] == ["c0", "c1", "c2"] and out["samples"] == len(df)
    joint = np.array(out["joint"])
    assert joint.shape == (3, 3) and joint.sum() == pytest.approx(1.0)
    assert out["label_health"] == pytest.approx(np.trace(joint))
    # the joint's rows are calibrated to the given labels' counts
    np.testing.assert_allclose(joint.sum(1) * len(df), df["label"].value_counts().sort_index().to_numpy())
    assert main(["rank", str(run_dir), "--summary"]) == 0
    assert "label health" in capsys.readouterr().out


def test_latest_run_and_errors(run_dir, tmp_path, monkeypatch, capsys):
    assert latest_run(run_dir.parent) == run_dir
    monkeypatch.chdir(run_dir.parent.parent)
    assert main(["rank", "--top", "2", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    with pytest.raises(ReportError):
        latest_run(tmp_path)
    assert main(["rank", str(tmp_path / "none")]) == 2
    assert main(["rank", str(run_dir), "--format", "xml"]) == 2
    bad = tmp_path / "x.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"a": [1]}), bad)
    assert main(["rank", str(bad)]) == 2
    assert "not a memscan report" in " ".join(capsys.readouterr().err.split())


def test_unknown_format_version(run_dir, tmp_path, capsys):
    import pyarrow.parquet as pq
    t = pq.read_table(run_dir / "report.parquet")
    meta = json.loads(t.schema.metadata[b"memscan"])
    meta["format_version"] = 99
    pq.write_table(t.replace_schema_metadata({b"memscan": json.dumps(meta).encode()}), tmp_path / "old.parquet")
    assert main(["rank", str(tmp_path / "old.parquet")]) == 2
    assert "format version 99" in " ".join(capsys.readouterr().err.split())


def test_records_carry_the_suggestion_and_reason(run_dir, capsys):
    df = load_frame(run_dir)
    rows = ranked_records(run_dir, top=5)
    for r in rows:
        want = df[df["sample_id"] == r["sample_id"]].iloc[0]
        assert r["suggested_label_name"] == want["suggested_label_name"] == want["pred_name"]
        assert r["reason"] == want["reason"] and (r["reason"] == "") == (r["category"] == "ok")
    flagged = [r for r in rows if r["reason"]]
    assert flagged, "the top of a run with flipped labels has flagged samples"
    assert main(["rank", str(run_dir), "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "why (rank: reason" in out and " ".join(flagged[0]["reason"].split()[:4]) in " ".join(out.split())
    assert main(["rank", str(run_dir), "--top", "5", "--no-why"]) == 0
    assert "why (rank" not in capsys.readouterr().out


def test_older_reports_without_the_reason_still_rank(run_dir, tmp_path):
    import shutil
    import pyarrow.parquet as pq
    copy = tmp_path / "old"
    shutil.copytree(run_dir, copy)
    t = pq.read_table(copy / "report.parquet")
    keep = [c for c in t.column_names if c not in ("suggested_label", "suggested_label_name", "p_suggested",
                                                   "suggestion_agreement", "reason")]
    pq.write_table(t.select(keep), copy / "report.parquet")
    rows = ranked_records(copy, top=3)
    assert len(rows) == 3 and "reason" not in rows[0]
    assert main(["rank", str(copy), "--top", "3"]) == 0
