"""Decisions files, `memscan apply` and `memscan check --accepted`."""
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from memscan.check import check_report, parse_spec
from memscan.cli import EXIT_CODES, main
from memscan.data import load_index
from memscan.decisions import MARK_COLUMN, accepted_paths, apply_decisions, pending, read_decisions
from memscan.errors import ConfigError, OutputExistsError
from memscan.report import read_frame

from helpers import report_meta, snapshot


def write_csv(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, message", [
    ("file,decision\na.png,keep\n", "lacks the column(s) path"),
    ("path,decision\na.png,frob\n", "row 2: decision 'frob' is not one of keep, relabel, remove"),
    ("path,decision,new_label\na.png,relabel,\n", "row 2 relabels 'a.png' without a new_label"),
    ("path,decision,new_label\na.png,relabel,zebra\n", "to 'zebra', which is not a class of the dataset"),
    ("path,decision\na.png,keep\na.png,remove\n", "row 3 repeats 'a.png'"),
    ("path,decision\n,keep\n", "row 2 has no path"),
    ("path,decision,decision\na.png,remove,keep\n", "names the column(s) decision more than once"),
    ("path,decision,note\na.png,remove," + "A" * 200_000 + "\n", "is not readable CSV near row 2"),
    ("", "may add given, new_label, note)"),
])
def test_bad_decisions_files_name_the_row_and_the_fix(tmp_path, text, message):
    f = write_csv(tmp_path / "d.csv", text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        read_decisions(f, classes=["cat", "dog"])
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_decisions_read_with_bom_case_and_optional_columns(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes("\ufeffpath,given,decision,new_label,note\na.png,cat,KEEP,,ok\nb.png,cat,relabel,dog,\"a, b\"\n"
                  "c.png,,remove,,\n".encode())
    d = read_decisions(f, classes=["cat", "dog"])
    assert d["a.png"].decision == "keep" and d["a.png"].given == "cat" and d["a.png"].note == "ok"
    assert d["b.png"].new_label == "dog" and d["b.png"].note == "a, b"
    assert d["c.png"].decision == "remove" and d["c.png"].given is None
    (tmp_path / "latin.csv").write_bytes(b"path,decision\n\xe9.png,keep\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_decisions(tmp_path / "latin.csv")
    with pytest.raises(ConfigError, match="does not exist"):
        read_decisions(tmp_path / "missing.csv")


def test_accepted_and_pending_match_by_path_and_label(tmp_path):
    f = write_csv(tmp_path / "d.csv", "path,given,decision,new_label\na,cat,keep,\nb,cat,keep,\nc,cat,relabel,dog\n"
                                      "d,dog,relabel,cat\ne,cat,remove,\ngone,cat,remove,\n")
    d = read_decisions(f)
    paths, labels = ["a", "b", "c", "d", "e"], ["cat", "dog", "cat", "cat", "cat"]
    # b was kept as a cat but is a dog now: that keep no longer holds; d's relabel is already applied
    assert accepted_paths(d, paths, labels) == {"a"}
    assert pending(d, paths, labels) == {"relabel": ["c"], "remove": ["e"], "unmatched": 1}


def decisions_for(run_dir, tmp_path):
    df = read_frame(run_dir)
    top = df.sort_values("mislabel_score", ascending=False)
    relabel, remove, keep = top.iloc[0], top.iloc[1], top.iloc[2]
    other = next(c for c in sorted(set(df["label_name"])) if c != relabel["label_name"])
    text = ("path,given,decision,new_label,note\n"
            f"{relabel['path']},{relabel['label_name']},relabel,{other},\n"
            f"{remove['path']},{remove['label_name']},remove,,\n"
            f"{keep['path']},{keep['label_name']},keep,,\n"
            "no/such.png,c0,keep,,\n")
    return write_csv(tmp_path / "decisions.csv", text), relabel, remove, keep, other


def test_apply_writes_a_manifest_and_never_touches_the_dataset(digits_run, tmp_path):
    data, run_dir = digits_run
    before = snapshot(data)
    f, relabel, remove, keep, other = decisions_for(run_dir, tmp_path)
    out = tmp_path / "out" / "cleaned.csv"
    res = apply_decisions(run_dir, f, out)
    assert snapshot(data) == before
    assert (res.samples, res.relabelled, res.removed, res.kept) == (len(read_frame(run_dir)) - 1, 1, 1, 1)
    assert res.unmatched == ["no/such.png"] and res.changes == {f"{relabel['label_name']} -> {other}": 1}
    t = load_index(out)                                   # memscan reads the cleaned manifest as a dataset
    by_name = {p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1]: t.class_names[y] for p, y in zip(t.paths, t.labels)}
    assert by_name[relabel["path"]] == other and remove["path"] not in by_name
    assert by_name[keep["path"]] == keep["label_name"] and len(by_name) == res.samples
    assert MARK_COLUMN in out.read_text().splitlines()[0]
    assert apply_decisions(run_dir, f, out).samples == res.samples     # its own earlier output is replaced


def test_apply_refuses_foreign_files_and_the_dataset(digits_run, tmp_path):
    data, run_dir = digits_run
    f = decisions_for(run_dir, tmp_path)[0]
    # the second merely mentions the marker column: not a manifest memscan wrote either
    for name, text in (("mine.csv", "path,label\nx,y\n"), ("foreign.csv", "id,memscan_decision_notes,v\n1,2,3\n")):
        foreign = write_csv(tmp_path / name, text)
        with pytest.raises(OutputExistsError, match="not a manifest written by 'memscan apply'"):
            apply_decisions(run_dir, f, foreign)
        assert foreign.read_text() == text
    with pytest.raises(ConfigError, match="part of the dataset"):
        apply_decisions(run_dir, f, data / "c0" / "cleaned.csv")
    with pytest.raises(ConfigError, match="must end in .csv or .parquet"):
        apply_decisions(run_dir, f, tmp_path / "cleaned.txt")
    assert main(["apply", str(run_dir), str(f), "--out", str(foreign)]) == EXIT_CODES[OutputExistsError]


def test_apply_keeps_the_bytes_of_a_parquet_dataset(tmp_path):
    def png(v):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8), v, np.uint8), "L").save(buf, format="PNG")
        return buf.getvalue()
    src = tmp_path / "data.parquet"
    pq.write_table(pa.table({"path": ["a", "b", "c"], "label_name": ["cat", "dog", "cat"],
                             "image": pa.array([png(10), png(20), png(30)], pa.binary())}), src)
    meta = report_meta(location=str(src), classes=["cat", "dog"], n=3, source="parquet-bytes")
    rep = tmp_path / "run" / "report.parquet"
    rep.parent.mkdir()
    pq.write_table(pa.table({"path": ["a", "b", "c"], "label_name": ["cat", "dog", "cat"]})
                   .replace_schema_metadata({b"memscan": json.dumps(meta).encode()}), rep)
    f = write_csv(tmp_path / "d.csv", "path,decision,new_label\na,relabel,dog\nb,remove,\n")
    with pytest.raises(ConfigError, match="give a .parquet path"):
        apply_decisions(rep, f, tmp_path / "cleaned.csv")
    res = apply_decisions(rep, f, tmp_path / "cleaned.parquet")
    t = load_index(res.out)
    assert t.source == "parquet-bytes" and t.paths == ["a", "c"]
    assert [t.class_names[y] for y in t.labels] == ["dog", "cat"] and t.read_bytes(1) == png(30)


def test_check_does_not_count_what_a_reviewer_kept(digits_run, tmp_path, capsys):
    _, run_dir = digits_run
    df = read_frame(run_dir)
    flagged = df[df["category"] == "mislabeled"].sort_values("mislabel_score", ascending=False)
    assert len(flagged) >= 3
    kept, changed = flagged.iloc[:2], flagged.iloc[2]
    rows = [f"{r.path},{r.label_name},keep,," for r in kept.itertuples()]
    rows.append(f"{changed.path},not-its-label,keep,,")             # kept under another label: still counted
    rows.append(f"{changed.path}x,c0,remove,,")                     # names no sample
    f = write_csv(tmp_path / "accepted.csv", "path,given,decision,new_label,note\n" + "\n".join(rows) + "\n")
    plain = check_report(run_dir, max_count=len(flagged) - 2)
    assert not plain.passed and plain.flagged == len(flagged)
    res = check_report(run_dir, max_count=len(flagged) - 2, accepted=f)
    assert res.passed and res.flagged == len(flagged) - 2
    assert res.accepted["excused"] == 2 and res.accepted["unmatched"] == 1 and res.accepted["pending_remove"] == []
    assert parse_spec(f"max-count=3, accepted={f}")["accepted"] == str(f)
    with pytest.raises(ConfigError, match="add a gate"):
        parse_spec(f"accepted={f}")
    assert main(["check", str(run_dir), "--max-count", str(len(flagged) - 2), "--accepted", str(f)]) == 0
    assert "2 flagged samples kept by a reviewer are not counted" in " ".join(capsys.readouterr().out.split())
    assert main(["check", str(run_dir), "--max-count", str(len(flagged) - 2)]) == 1


def test_check_lists_decisions_not_applied_yet(digits_run, tmp_path, capsys):
    _, run_dir = digits_run
    f, relabel, remove, _, _ = decisions_for(run_dir, tmp_path)
    res = check_report(run_dir, max_mislabeled=1.0, accepted=f)
    assert res.accepted["pending_relabel"] == [relabel["path"]] and res.accepted["pending_remove"] == [remove["path"]]
    assert main(["check", str(run_dir), "--max-mislabeled", "1", "--accepted", str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accepted"]["pending_relabel"] == [relabel["path"]]
    assert out["diff"] is None


def test_match_by_exact_path_or_unique_tail():
    from memscan.decisions import Decision, match
    d = {p: Decision(p, None, "keep", None) for p in ("cat/1.png", "dog/2.png", "3.png", "gone.png")}
    paths = ["/data/cifar/cat/1.png", "dog/2.png", "/a/3.png", "/b/3.png", "cat/10.png"]
    m = match(d, paths)
    assert set(m) == {"/data/cifar/cat/1.png", "dog/2.png"}      # "3.png" ends two paths: neither
    assert m["/data/cifar/cat/1.png"].path == "cat/1.png"


def test_the_whole_loop_apply_run_check(digits_run, tmp_path):
    """Decisions made on run 1, applied, run again on the cleaned manifest (whose paths are longer): the gate
    on run 2 still finds the kept sample, and nothing is pending."""
    from memscan.config import RunConfig
    from memscan.pipeline import run
    _, run_dir = digits_run
    f, relabel, remove, keep, other = decisions_for(run_dir, tmp_path)
    out = apply_decisions(run_dir, f, tmp_path / "elsewhere" / "cleaned.csv").out
    cfg = RunConfig(max_epochs=2, batch_size=32, image_size=8, augment="crop", min_epochs=1)
    run2 = run(out, cfg, out=tmp_path / "run2", cache_dir=tmp_path / "cache").out_dir
    df2 = read_frame(run2)
    assert not df2["path"].str.endswith("/" + remove["path"]).any()
    res = check_report(run2, max_mislabeled=1.0, accepted=f)
    assert res.accepted["pending_relabel"] == [] and res.accepted["pending_remove"] == []
    assert res.accepted["unmatched"] == 2                           # the removed sample and no/such.png
    kept = df2[df2["path"].str.endswith("/" + keep["path"])]
    assert len(kept) == 1 and kept.iloc[0]["label_name"] == keep["label_name"]


def test_apply_says_why_it_cannot_write(digits_run, tmp_path):
    data, run_dir = digits_run
    f = decisions_for(run_dir, tmp_path)[0]
    with pytest.raises(ConfigError, match="cannot create its folder"):          # a file where a folder must be
        apply_decisions(run_dir, f, f / "x.csv")
    with pytest.raises(ConfigError, match="a CSV of their paths; give a .csv path"):
        apply_decisions(run_dir, f, tmp_path / "cleaned.parquet")                # image files: no Parquet


def test_two_decisions_for_one_sample_are_refused():
    from memscan.decisions import Decision, match
    d = {"c0/0036.png": Decision("c0/0036.png", None, "remove", None),
         "0036.png": Decision("0036.png", None, "relabel", "c2")}
    with pytest.raises(ConfigError, match="'c0/0036.png' and '0036.png' both name the sample 'ds/c0/0036.png'"):
        match(d, ["ds/c0/0036.png", "ds/c1/0001.png"])


def test_apply_says_which_image_files_the_manifest_cannot_list(tmp_path):
    import os
    from helpers import digits_folder
    from memscan.config import RunConfig
    from memscan.pipeline import run
    data = digits_folder(tmp_path / "ds", per_class=6, classes=2)
    r = run(data, RunConfig(max_epochs=1, batch_size=8, image_size=8, augment="none", min_epochs=1),
            out=tmp_path / "run")
    first = next((data / "c0").iterdir())
    os.link(first, os.path.join(os.fsencode(data / "c0"), b"bad-\xff.png"))   # a name that is not UTF-8
    f = write_csv(tmp_path / "d.csv", "path,decision\n")
    res = apply_decisions(r.out_dir, f, tmp_path / "clean.csv")
    assert len(res.left_out) == 1 and "not UTF-8" in res.left_out[0]["error"]
    assert res.samples == 12
