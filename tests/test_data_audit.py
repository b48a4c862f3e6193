"""A run finds planted duplicates, a conflicting copy, leaks into a test set and a blank image; the gates,
the ranking and the HTML page show them; the test set is only read."""
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import digits_folder, snapshot
from memscan.check import check_report, parse_spec
from memscan.config import RunConfig
from memscan.errors import ConfigError, ReportError
from memscan.pipeline import run
from memscan.rank import select
from memscan.report import read_frame, read_metadata


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    data = digits_folder(root / "train", per_class=25, classes=3)
    test = digits_folder(root / "test-src", per_class=35, classes=3)
    first = sorted((data / "c0").iterdir())[0]
    shutil.copy(first, data / "c2" / "copy-under-c2.png")                    # same image, another label
    img = np.asarray(Image.open(sorted((data / "c1").iterdir())[0]), dtype=np.int16)
    Image.fromarray(np.clip(img + 20, 0, 255).astype(np.uint8), "L").save(data / "c1" / "brighter.png")
    Image.fromarray(np.full((8, 8), 7, np.uint8), "L").save(data / "c0" / "blank.png")
    test_dir = root / "test"
    for c in ("c0", "c1", "c2"):   # the test split: digits the training set does not hold, plus two leaks
        (test_dir / c).mkdir(parents=True)
        for p in sorted((test / c).iterdir())[25:]:
            shutil.copy(p, test_dir / c / p.name)
    shutil.copy(sorted((data / "c1").iterdir())[3], test_dir / "c1" / "leaked.png")
    shutil.copy(sorted((data / "c2").iterdir())[4], test_dir / "c0" / "leaked-relabelled.png")
    before = snapshot(test_dir)
    cfg = RunConfig(max_epochs=3, batch_size=32, image_size=8, augment="crop", min_epochs=1)
    res = run(data, cfg, out=root / "run", cache_dir=root / "cache", test_dataset=test_dir)
    assert snapshot(test_dir) == before                                        # the test set is only read
    return data, test_dir, res


def test_duplicates_and_conflict_in_the_report(audited):
    _, _, res = audited
    df = read_frame(res.report_path).set_index("path")
    copy, orig = df.loc["c2/copy-under-c2.png"], df.loc[df.loc["c2/copy-under-c2.png", "duplicate_of"]]
    assert copy["duplicate_kind"] == "exact" and copy["duplicate_group"] == orig["duplicate_group"] >= 0
    assert orig.name.startswith("c0/") and copy["duplicate_conflict"] and orig["duplicate_conflict"]
    assert copy["duplicate_suspect"] != orig["duplicate_suspect"]               # exactly one of them is singled out
    suspect = copy if copy["duplicate_suspect"] else orig
    assert suspect["mislabel_score"] >= (orig if copy["duplicate_suspect"] else copy)["mislabel_score"]
    bright = df.loc["c1/brighter.png"]
    assert bright["duplicate_kind"] == "near" and bright["duplicate_similarity"] > 0.95
    assert not bright["duplicate_conflict"]
    assert "low_information" in df.loc["c0/blank.png", "image_issue"]
    assert (df["width"] == 8).all() and (df["height"] == 8).all()
    a = read_metadata(res.report_path).audit
    assert a["conflicting_groups"] == 1 and a["duplicate_suspects"] == 1 and a["exact_duplicates"] >= 2
    assert a["redundant_images"] == a["duplicate_images"] - a["duplicate_groups"]
    assert res.summary["audit"] == a and read_metadata(res.report_path).timings["audit_s"] > 0


def test_leaks_are_paired_with_their_training_images(audited):
    data, test_dir, res = audited
    leaks = pq.read_table(res.out_dir / "leaks.parquet").to_pandas()
    got = {(r.test_path, r.train_path, r.same_label) for r in leaks.itertuples()}
    c1 = sorted(p.name for p in (data / "c1").iterdir())
    c2 = sorted(p.name for p in (data / "c2").iterdir())
    assert ("c1/leaked.png", f"c1/{c1[3]}", True) in got
    assert ("c0/leaked-relabelled.png", f"c2/{c2[4]}", False) in got
    t = read_metadata(res.report_path).audit["test"]
    assert t["leaked"] == len(leaks) and t["label_differs"] >= 1 and t["n"] == 32
    df = read_frame(res.report_path).set_index("path")
    assert df.loc[f"c1/{c1[3]}", "test_duplicates"] >= 1
    assert json.loads((res.out_dir / "run-args.json").read_text())["test_dataset"] == str(test_dir.resolve())


def test_gates_beyond_labels(audited):
    _, _, res = audited
    a = read_metadata(res.report_path).audit
    r = check_report(res.report_path, max_duplicates=a["redundant_images"], max_leaks=a["test"]["leaked"],
                     max_image_issues=a["images_with_issues"])
    assert r.passed and [g.name for g in r.gates] == ["max-duplicates", "max-image-issues", "max-leaks"]
    r = check_report(res.report_path, max_duplicates=0, max_leaks=0, max_image_issues=0, top=2)
    assert not r.passed and all(len(g.offenders) >= 1 for g in r.gates)
    assert {"test_path", "train_path"} <= set(r.gates[2].offenders[0])
    assert parse_spec("max-duplicates=3, max-leaks=0, max-image-issues=5") == {
        "max_duplicates": 3, "max_leaks": 0, "max_image_issues": 5}
    with pytest.raises(ConfigError, match="whole number"):
        check_report(res.report_path, max_leaks=-1)


def test_leak_gate_needs_a_test_set(digits_run):
    with pytest.raises(ReportError, match="--test"):
        check_report(digits_run[1], max_leaks=0)


def test_rank_by_the_new_scores(audited):
    _, _, res = audited
    df = read_frame(res.report_path)
    top = select(df, by="information", top=1)
    assert top["path"].iloc[0] == "c0/blank.png"
    dups = select(df, by="duplicate", top=2)
    assert (dups["score"] == 1).all()
    from memscan.cli.rank import _audit_line
    from memscan.rank import ranked_records
    rows = ranked_records(res.report_path, by="duplicate", top=4)
    assert all(r["duplicate_of"] for r in rows)
    assert any("(the group carries two labels)" in _audit_line(r) for r in rows)
    assert "duplicate_of" not in ranked_records(res.report_path, top=1)[0]


def test_rank_by_duplicate_lists_only_duplicates_in_every_format(audited, capsys):
    from memscan.cli import main
    _, _, res = audited
    df = read_frame(res.report_path)
    has = int(np.isfinite(np.asarray(df["duplicate_similarity"], dtype=float)).sum())
    assert 0 < has < len(df)      # the table once crashed on the rows without a duplicate
    assert main(["rank", str(res.out_dir), "--by", "duplicate"]) == 0
    assert f"{has} samples by duplicate" in " ".join(capsys.readouterr().out.split())
    assert main(["rank", str(res.out_dir), "--by", "duplicate", "--format", "json", "--top", "0"]) == 2
    capsys.readouterr()
    assert main(["rank", str(res.out_dir), "--by", "duplicate", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == has and all(r["duplicate_of"] for r in rows)


def test_html_shows_duplicates_and_leaks(audited):
    from memscan.html_report import write_html
    _, _, res = audited
    page = write_html(res.out_dir).path.read_text()
    assert 'id="duplicates"' in page and "Leaks into the test set" in page and "leaked-relabelled.png" in page
    assert "copy-under-c2.png" in page and "(likely wrong)" in page
    data = json.loads(page.split('id="memscan-data">')[1].split("</script>")[0])
    assert data["counts"]["duplicates"] >= 4 and data["counts"]["image issues"] >= 1
    assert any("image issues" in c["views"] for c in data["cards"])


def test_a_missing_test_set_fails_before_training(tmp_path):
    data = digits_folder(tmp_path / "d", per_class=5, classes=2)
    with pytest.raises(Exception, match="nope"):
        run(data, RunConfig(max_epochs=1, image_size=8), out=tmp_path / "r", cache_dir=tmp_path / "c",
            test_dataset=tmp_path / "nope")
    assert not (tmp_path / "r").exists()


def test_nothing_is_written_inside_the_test_set(audited, tmp_path):
    data, test_dir, res = audited
    before = snapshot(test_dir)
    cfg = RunConfig(max_epochs=1, batch_size=32, image_size=8, min_epochs=1)
    with pytest.raises(ConfigError, match="--test set"):
        run(data, cfg, out=tmp_path / "r", cache_dir=test_dir / "cache", test_dataset=test_dir)
    with pytest.raises(ConfigError, match="--test set"):
        run(data, cfg, out=test_dir / "runs", cache_dir=tmp_path / "c", test_dataset=test_dir)
    from memscan.html_report import write_html
    with pytest.raises(ConfigError, match="part of the dataset"):
        write_html(res.out_dir, test_dir / "c0" / "page.html")
    assert snapshot(test_dir) == before


def test_test_set_errors_say_so(tmp_path):
    data = digits_folder(tmp_path / "d", per_class=5, classes=2)
    with pytest.raises(Exception, match="^--test: "):
        run(data, RunConfig(max_epochs=1, image_size=8), out=tmp_path / "r", cache_dir=tmp_path / "c",
            test_dataset=tmp_path / "missing")


def test_hostile_audit_metadata_is_escaped_in_html(audited, tmp_path):
    from memscan.html_report import write_html
    from memscan.report import META_KEY
    _, _, res = audited
    copy = tmp_path / "run"
    shutil.copytree(res.out_dir, copy)
    t = pq.read_table(copy / "report.parquet")
    meta = json.loads(t.schema.metadata[META_KEY])
    meta["audit"]["duplicate_groups"] = "<script>alert(1)</script>"
    meta["audit"]["image_issues"] = {"<img src=x onerror=alert(2)>": 3}
    meta["audit"]["test"]["location"] = "<b>x</b>"
    pq.write_table(t.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), copy / "report.parquet")
    (copy / "leaks.parquet").write_bytes(b"not parquet")
    page = write_html(copy).path.read_text()
    assert "<script>alert(1)" not in page and "<img src=x" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(1)" in page and "is not a readable Parquet file" in page
    with pytest.raises(ReportError, match="not a readable Parquet"):
        check_report(copy, max_leaks=0)



def test_gate_rules(audited, tmp_path):
    import csv
    _, _, res = audited
    df = read_frame(res.report_path)
    with pytest.raises(ConfigError, match="not a DataFrame"):
        check_report(df, max_leaks=0)
    issues = df[df["image_issue"] != ""]
    accepted = tmp_path / "decisions.csv"
    with open(accepted, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "given", "decision", "new_label", "note"])
        for r in issues.itertuples():
            w.writerow([r.path, r.label_name, "keep", "", "fine as it is"])
    r = check_report(res.report_path, max_image_issues=0, accepted=accepted)
    assert r.passed and r.gates[0].value == 0


def test_run_check_max_leaks_needs_test(tmp_path, capsys):
    from memscan.cli import main
    data = digits_folder(tmp_path / "d", per_class=5, classes=2)
    assert main(["run", str(data), "--out", str(tmp_path / "r"), "--check", "max-leaks=0"]) == 2
    assert "add --test" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unreadable_test_images_are_named_in_the_summary_and_the_leak_gate(tmp_path, capsys):
    """They were skipped without a word, and the leak gate passed as if it had checked them."""
    from memscan.cli import main
    data = digits_folder(tmp_path / "train", per_class=20, classes=2)
    test = digits_folder(tmp_path / "test", per_class=5, classes=2)
    (test / "c0" / "broken.png").write_bytes(b"\x89PNG, but not an image")
    assert main(["run", str(data), "--test", str(test), "--out", str(tmp_path / "run"), "--max-epochs", "2",
                 "--image-size", "8", "--batch-size", "16", "--min-epochs", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1 unreadable test images skipped: the leak check does not cover them" in out
    gate = check_report(tmp_path / "run", max_leaks=100).gates[0]
    assert gate.passed and "1 unreadable test images were not checked" in gate.message
