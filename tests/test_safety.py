"""Hostile and careless use end to end (issue 11): nothing from data runs, nothing outside a memscan run
folder is deleted or overwritten, nothing is written into the dataset, garbage never passes a gate, and
every failure is one line with its documented exit code."""
import errno
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memscan.cli import main
from memscan.config import RunConfig
from memscan.errors import Interrupted, OutputError, TrainingError
from memscan.pipeline import run
from memscan.run_folder import RunFolder

from helpers import digits_folder, rewrite_report, snapshot

FAST = ["--max-epochs", "2", "--batch-size", "16", "--image-size", "8", "--augment", "crop", "--min-epochs", "1",
        "-q"]
CFG = RunConfig(max_epochs=2, batch_size=16, image_size=8, augment="crop", min_epochs=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits_folder(tmp_path_factory.mktemp("safety") / "proj" / "data", per_class=12, classes=2)


@pytest.fixture(scope="module")
def a_run(data, tmp_path_factory):
    return run(data, CFG, out=tmp_path_factory.mktemp("runs") / "r").out_dir


def fails(capsys, argv, code=2, match=""):
    rc = main(argv)
    err = " ".join(capsys.readouterr().err.split())
    assert rc == code, err
    assert "Traceback" not in err and "internal error" not in err and match in err, err
    return err


def test_overwrite_never_deletes_the_dataset_or_other_files(data, tmp_path, capsys, monkeypatch):
    proj = tmp_path / "proj"
    shutil.copytree(data, proj / "data")
    (proj / "report.parquet").write_text("a stray file")
    (proj / "notes.txt").write_text("unrelated")
    before = snapshot(proj)
    monkeypatch.chdir(proj)
    fails(capsys, ["run", "./data", "--out", ".", "--overwrite", *FAST], match="contains the dataset")
    fails(capsys, ["run", str(proj / "data"), "--out", str(proj), "--overwrite", *FAST], match="contains the dataset")
    fails(capsys, ["run", "./data", "--out", "data/runs", "--overwrite", *FAST], match="inside the dataset")
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "run.json").write_text("{}")
    (other / "sub" / "keep.txt").write_text("x")
    fails(capsys, ["run", "./data", "--out", str(other), "--overwrite", *FAST], match="not a memscan run")
    assert snapshot(proj) == before and (other / "sub" / "keep.txt").exists()


def test_no_output_lands_in_or_over_the_dataset(data, a_run, tmp_path, capsys):
    before = snapshot(data)
    img = next((data / "c0").iterdir())
    fails(capsys, ["report", str(a_run), "--out", str(img)], match="part of the dataset")
    fails(capsys, ["plot", str(a_run), "--out", str(data / "plots")], match="inside the dataset")
    fails(capsys, ["check", str(a_run), "--max-count", "5", "--junit", str(data / "c0" / "j.xml")],
          match="part of the dataset")
    fails(capsys, ["run", str(data), "--out", str(tmp_path / "r"), "--cache-dir", str(data / "cache"), *FAST],
          match="inside the dataset")
    assert snapshot(data) == before and not (tmp_path / "r").exists()
    foreign = tmp_path / "page.html"
    foreign.write_text("<html>someone's page</html>")
    fails(capsys, ["report", str(a_run), "--out", str(foreign)], match="not written by memscan")
    assert foreign.read_text() == "<html>someone's page</html>"
    fails(capsys, ["report", str(a_run), "--out", str(tmp_path)], match="is a folder")
    fails(capsys, ["check", str(a_run), "--max-count", "5", "--junit", str(tmp_path)], match="is a folder")
    fails(capsys, ["plot", str(a_run), "--dpi", "0"], match="--dpi 0")
    assert main(["report", str(a_run), "--out", str(tmp_path / "ok.html")]) == 0
    assert main(["report", str(a_run), "--out", str(tmp_path / "ok.html")]) == 0   # its own page: replaced
    assert main(["plot", str(a_run), "--out", str(tmp_path / "plots")]) == 0
    assert main(["plot", str(a_run), "--out", str(tmp_path / "plots")]) == 0


def test_nothing_is_written_inside_the_validation_set(data, tmp_path, capsys):
    val = tmp_path / "val"
    shutil.copytree(data, val)
    before = snapshot(val)
    fails(capsys, ["run", str(data), "--val", str(val), "--out", str(val / "c0" / "run"), *FAST],
          match="--out (--val set)")
    fails(capsys, ["run", str(data), "--val", str(val), "--out", str(tmp_path / "r"), "--cache-dir",
                   str(val / "c1" / "cache"), *FAST], match="decode cache (--val set)")
    assert snapshot(val) == before and not (tmp_path / "r").exists()
    fails(capsys, ["run", str(data), "--val", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *FAST],
          match="--val:")
    assert main(["run", str(data), "--val", str(val), "--out", str(tmp_path / "ok"), *FAST]) == 0
    fails(capsys, ["report", str(tmp_path / "ok"), "--out", str(val / "c0" / "page.html")], match="part of the dataset")
    fails(capsys, ["plot", str(tmp_path / "ok"), "--out", str(val / "plots")], match="inside the dataset")
    assert snapshot(val) == before


def test_plot_never_writes_through_a_planted_plots_link(a_run, tmp_path, capsys):
    run_dir = tmp_path / "r"
    shutil.copytree(a_run, run_dir)
    shutil.rmtree(run_dir / "plots", ignore_errors=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (run_dir / "plots").symlink_to(victim)
    fails(capsys, ["plot", str(run_dir)], match="is a link or a file")
    assert not any(victim.iterdir())


def test_a_locked_run_folder_refuses_a_second_run(data, tmp_path, capsys):
    held = RunFolder.start(tmp_path / "r")
    fails(capsys, ["run", str(data), "--out", str(tmp_path / "r"), "--overwrite", *FAST], code=75,
          match=f"in use by another memscan process (pid {os.getpid()}")
    held.release(failed=True)


@pytest.mark.parametrize("opt, value", [("--lr", "nan"), ("--lr", "inf"), ("--weight-decay", "nan"),
                                        ("--cache-memory", "nan"), ("--workers", "-1"),
                                        ("--seed", "100000000000000000000"), ("--momentum", "nan")])
def test_numeric_options_must_be_finite_and_in_range(data, tmp_path, capsys, opt, value):
    fails(capsys, ["run", str(data), "--out", str(tmp_path / "r"), opt, value, *FAST], match=opt.strip("-")
          .replace("-", "_"))
    assert not (tmp_path / "r").exists()


def test_non_finite_predictions_write_no_report(data, tmp_path, monkeypatch):
    import memscan.pipeline as pipeline

    def nan_probs(model, source, *, out, **kw):
        out[:] = np.nan
        return out

    monkeypatch.setattr(pipeline, "predict_probs", nan_probs)
    with pytest.raises(TrainingError, match="NaN/inf.*no report was written"):
        run(data, CFG, out=tmp_path / "r")
    assert not (tmp_path / "r" / "report.parquet").exists()


def test_a_gate_never_passes_on_non_finite_scores(a_run, tmp_path, capsys):
    df = pd.read_parquet(a_run / "report.parquet")
    df["mislabel_score"] = np.inf
    bad = rewrite_report(a_run, tmp_path / "bad" / "report.parquet", df)
    fails(capsys, ["check", str(bad), "--max-mislabeled", "0"], match="non-finite")
    df["mislabel_score"] = np.nan      # refused where every reader reads a report
    bad = rewrite_report(a_run, tmp_path / "nan" / "report.parquet", df)
    fails(capsys, ["check", str(bad), "--max-mislabeled", "0"], match="mislabel_score column has empty or NaN")


def test_damaged_or_foreign_reports_are_usage_errors(a_run, tmp_path, capsys):
    import pyarrow.parquet as pq
    t = pq.read_table(a_run / "report.parquet")
    for meta, match in (({b"memscan": b"{not json"}, "damaged memscan metadata"),
                        ({b"memscan": json.dumps({"format_version": 1}).encode()}, "lacks report metadata")):
        p = tmp_path / f"r{len(meta[b'memscan'])}" / "report.parquet"
        p.parent.mkdir()
        pq.write_table(t.replace_schema_metadata(meta), p)
        fails(capsys, ["rank", str(p)], match=match)
    other = tmp_path / "other" / "report.parquet"
    df = pd.read_parquet(a_run / "report.parquet")
    df["path"] = "elsewhere/" + df["path"]
    rewrite_report(a_run, other, df)
    err = fails(capsys, ["check", str(a_run), "--baseline", str(other), "--max-new", "1"], match="share no sample")
    assert "<frame>" not in err and str(a_run / "report.parquet") in err


def test_damaged_audit_or_missing_path_columns_are_usage_errors(a_run, tmp_path, capsys):
    df = pd.read_parquet(a_run / "report.parquet")
    df["duplicate_group"] = "x"
    bad = rewrite_report(a_run, tmp_path / "dup" / "report.parquet", df)
    fails(capsys, ["report", str(bad), "--out", str(tmp_path / "p.html")], match="duplicate_group column holds")
    df = pd.read_parquet(a_run / "report.parquet")
    df["duplicate_of"] = 3
    bad = rewrite_report(a_run, tmp_path / "of" / "report.parquet", df)
    fails(capsys, ["rank", str(bad), "--by", "duplicate"], match="duplicate_of column holds")
    df = pd.read_parquet(a_run / "report.parquet")      # intact but for the missing column
    bad = rewrite_report(a_run, tmp_path / "nopath" / "report.parquet", df.drop(columns=["path"]))
    fails(capsys, ["plot", str(bad), "--out", str(tmp_path / "plots")], match="lacks the report column(s) path")


def test_resume_with_garbage_arguments_is_a_usage_error(a_run, tmp_path, capsys):
    r = tmp_path / "r"
    shutil.copytree(a_run, r)
    (r / "report.parquet").unlink()
    (r / "run-args.json").write_text("{garbage")
    fails(capsys, ["resume", str(r)], match="damaged")
    good = json.loads((a_run / "run-args.json").read_text())
    for key, value, match in (("dataset", 5, "invalid dataset (a path expected)"),
                              ("relabelled", "yes", "invalid relabelled (true or false expected)"),
                              ("path_column", 7, "invalid path_column (text or null expected)"),
                              ("config", {**good["config"], "model": None}, "model=None must name a model")):
        (r / "run-args.json").write_text(json.dumps({**good, key: value}))
        fails(capsys, ["resume", str(r)], match=match)


def test_the_api_takes_a_path_for_weights_and_records_text():
    from pathlib import Path
    assert RunConfig(weights=Path("w.pt")).weights == "w.pt"
    with pytest.raises(Exception, match="weights=5 must be a file path"):
        RunConfig(weights=5)


def test_eval_noise_checks_before_training_and_keeps_results(data, tmp_path, capsys):
    fails(capsys, ["eval-noise", str(data), "--rate", "0.001", "--out", str(tmp_path / "e"), *FAST],
          match="flips no label")
    assert not (tmp_path / "e").exists()
    assert main(["eval-noise", str(data), "--rate", "0.2", "--out", str(tmp_path / "e"), *FAST, "--json"]) == 0
    capsys.readouterr()
    before = (tmp_path / "e" / "eval.json").read_bytes()
    fails(capsys, ["eval-noise", str(data), "--rate", "0.3", "--out", str(tmp_path / "e"), *FAST],
          match="already exists")
    assert (tmp_path / "e" / "eval.json").read_bytes() == before
    assert main(["eval-noise", str(data), "--rate", "0.3", "--out", str(tmp_path / "e"), "--overwrite", *FAST,
                 "--json"]) == 0
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["rate"] == 0.3


def test_full_disk_writing_the_model_exits_74_without_a_partial_file(data, tmp_path, monkeypatch, capsys):
    import memscan.files as files
    real = files.Path.write_bytes

    def write_bytes(self, payload):
        if self.name.startswith("model.pt.tmp"):
            real(self, b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, payload)

    monkeypatch.setattr(files.Path, "write_bytes", write_bytes)
    fails(capsys, ["run", str(data), "--out", str(tmp_path / "r"), *FAST], code=74, match="No space left")
    assert not list((tmp_path / "r").glob("model.pt*"))


def test_any_out_of_space_error_exits_74(data, tmp_path, monkeypatch, capsys):
    import memscan.pipeline as pipeline

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "somewhere"))

    monkeypatch.setattr(pipeline, "write_epoch", full)
    fails(capsys, ["run", str(data), "--out", str(tmp_path / "r"), *FAST], code=74, match="no space left")


def test_markup_in_class_names_is_text(tmp_path, capsys):
    rows = []
    for i, label in enumerate(["[/]", "[bold]cat"] * 12):
        Image.fromarray(np.full((8, 8), 40 * (i % 2) + i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": label})
    pd.DataFrame(rows).to_csv(tmp_path / "data.csv", index=False)
    assert main(["run", str(tmp_path / "data.csv"), "--out", str(tmp_path / "r"), *FAST[:-1],
                 "--check", "max-count=1000"]) == 0
    out = capsys.readouterr().out
    assert "[/]" in out and "data check passed" in out


def test_manifest_in_its_own_folder_runs_with_the_default_out(tmp_path, capsys, monkeypatch):
    for i in range(16):
        Image.fromarray(np.full((8, 8), 15 * i, np.uint8)).save(tmp_path / f"{i}.png")
    pd.DataFrame({"path": [f"{i}.png" for i in range(16)], "label": ["a", "b"] * 8}).to_csv(tmp_path / "d.csv",
                                                                                            index=False)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "d.csv", *FAST]) == 0, capsys.readouterr().err
    (run_dir,) = (tmp_path / "memscan-runs").iterdir()
    assert RunFolder.is_run(run_dir)


def test_interrupt_while_decoding_says_what_happened(data, tmp_path, monkeypatch, capsys):
    import memscan.prepare as prepare

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "load_images", interrupted)
    with pytest.raises(Interrupted, match="while decoding"):
        run(data, CFG, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    fails(capsys, ["run", str(data), "--out", str(tmp_path / "r"), *FAST], code=130, match="while decoding")


def test_interrupt_while_scoring_says_how_to_finish(data, tmp_path, monkeypatch):
    import memscan.pipeline as pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "predict_probs", interrupted)
    with pytest.raises(Interrupted, match="while scoring.*memscan resume"):
        run(data, CFG, out=tmp_path / "r")
    monkeypatch.undo()
    assert run(data, CFG, out=tmp_path / "r", resume=True).report_path.exists()


def test_full_disk_error_class(tmp_path, monkeypatch):
    from memscan.files import write_text_atomic
    import memscan.files as files

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.Path, "write_text", full)
    with pytest.raises(OutputError, match="No space left on device"):
        write_text_atomic(tmp_path / "x.json", "{}")
    assert not list(tmp_path.iterdir())


def test_a_class_folder_linking_outside_the_dataset_is_still_the_dataset(data, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(data / "c1", elsewhere)
    ds = tmp_path / "ds"
    shutil.copytree(data / "c0", ds / "c0")
    (ds / "c1").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    fails(capsys, ["run", str(ds), "--out", str(elsewhere / "run"), *FAST], match="inside the dataset folder")
    fails(capsys, ["run", str(ds), "--out", str(tmp_path / "r"), "--cache-dir", str(elsewhere), *FAST],
          match="inside the dataset folder")
    assert main(["run", str(ds), "--out", str(tmp_path / "r"), *FAST]) == 0
    fails(capsys, ["plot", str(tmp_path / "r"), "--out", str(elsewhere / "plots")], match="inside the dataset")
    assert snapshot(elsewhere) == before


def test_step_summary_is_checked_appended_whole_and_never_a_fifo(a_run, data, tmp_path, capsys, monkeypatch):
    img = next((data / "c0").iterdir())
    before = img.read_bytes()
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(img))
    fails(capsys, ["check", str(a_run), "--max-count", "100"], match="GITHUB_STEP_SUMMARY")
    assert img.read_bytes() == before
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(fifo))
    fails(capsys, ["check", str(a_run), "--max-count", "100"], match="not a regular file")
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["check", str(a_run), "--max-count", "100"]) == 0
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "memscan data check" in text


def test_a_fifo_in_the_decode_cache_is_rebuilt_not_read(data, tmp_path):
    cache = tmp_path / "cache"
    run(data, CFG, out=tmp_path / "a", cache_dir=cache)
    (npy,) = cache.glob("*.npy")
    npy.unlink()
    os.mkfifo(npy)
    res = run(data, CFG, out=tmp_path / "b", cache_dir=cache)     # would block forever on the FIFO
    assert any("not a regular file" in n for n in res.summary["notes"])


def test_only_memscans_own_files_and_temporaries_are_removed(data, tmp_path, capsys):
    f = RunFolder.start(tmp_path / "r")
    f.release()
    (f.path / "data.tmp123").write_text("someone's")
    (f.path / "trajectories").mkdir()
    (f.path / "trajectories" / "epoch-99-final.parquet").write_text("someone's")
    (f.path / "report.parquet.tmp99").write_text("memscan's, cut short")
    assert main(["run", str(data), "--out", str(f.path), "--overwrite", *FAST]) == 0
    assert (f.path / "data.tmp123").exists() and (f.path / "trajectories" / "epoch-99-final.parquet").exists()
    assert not (f.path / "report.parquet.tmp99").exists()


def test_diff_shows_control_characters_escaped(a_run, tmp_path, capsys):
    df = pd.read_parquet(a_run / "report.parquet")
    df["path"] = df["path"].str.replace("c0/", "c0/\x1b]0;title\x07\x1b[2J", regex=False)
    df["category"] = "mislabeled"
    old = rewrite_report(a_run, tmp_path / "old" / "report.parquet", df.assign(category="ok"))
    new = rewrite_report(a_run, tmp_path / "new" / "report.parquet", df)
    assert main(["diff", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b" in out


@pytest.mark.parametrize("argv, match", [(["--lr", "1e308"], "lr="), (["--cache-memory", "1e300"], "cache_memory"),
                                         (["--batch-size", "99999999999999999999"], "batch_size")])
def test_huge_options_are_refused_before_any_work(data, tmp_path, capsys, argv, match):
    fails(capsys, ["run", str(data), "--out", str(tmp_path / "r"), *FAST, *argv], match=match)
    assert not (tmp_path / "r").exists()


def test_negative_top_is_a_usage_error(a_run, capsys):
    fails(capsys, ["check", str(a_run), "--max-count", "5", "--top", "-1"], match="--top -1")
    fails(capsys, ["diff", str(a_run), str(a_run), "--top", "-1"], match="--top -1")


def test_a_fifo_named_like_an_image_is_listed_as_skipped(data, tmp_path, capsys):
    ds = tmp_path / "ds"
    shutil.copytree(data, ds)
    os.mkfifo(ds / "c0" / "pipe.png")
    (ds / "c1" / "zero.png").symlink_to("/dev/zero")
    assert main(["run", str(ds), "--out", str(tmp_path / "r"), *FAST, "--json"]) == 0
    skipped = {s["path"]: s["error"] for s in json.loads(capsys.readouterr().out)["skipped"]}
    assert "FIFO" in skipped["c0/pipe.png"] and "character device" in skipped["c1/zero.png"]


def test_report_beside_a_loose_report_never_replaces_a_foreign_page(a_run, tmp_path, capsys):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(a_run / "report.parquet", loose / "report.parquet")
    (loose / "report.html").write_text("<html>the user's own page</html>")
    fails(capsys, ["report", str(loose / "report.parquet")], match="not written by memscan")
    assert (loose / "report.html").read_text() == "<html>the user's own page</html>"


def test_a_location_memscan_may_not_write_is_not_an_internal_error(data, tmp_path, monkeypatch, capsys):
    import memscan.pipeline as pipeline

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "r" / "trajectories"))

    monkeypatch.setattr(pipeline, "write_epoch", denied)
    fails(capsys, ["run", str(data), "--out", str(tmp_path / "r"), *FAST], code=74, match="permission denied")


def _tamper_meta(meta, change):
    change(meta)
    return meta


REPORT_TAMPERING = {
    "scores as text": (lambda df: df.assign(mislabel_score=df["mislabel_score"].astype(str)), None,
                       "mislabel_score column holds values of type large_string"),
    "unknown category": (lambda df: df.assign(category="weird"), None, "not one of mislabeled"),
    "label out of range": (lambda df: df.assign(label=99), None, "class indices outside"),
    "no category column": (lambda df: df.drop(columns=["category"]), None, "lacks the report column(s) category"),
    "no class names": (None, lambda m: m["dataset"].update(classes=[]), "dataset.classes"),
    "curves of text": (None, lambda m: m.update(curves={"weight_norm": "x"}), "curves are not lists of numbers"),
    "warnings a number": (None, lambda m: m.update(warnings=5), "warnings"),
    "location a number": (None, lambda m: m["dataset"].update(location=5), "dataset.location"),
}


@pytest.mark.parametrize("case", sorted(REPORT_TAMPERING))
@pytest.mark.parametrize("command", [["rank", "--summary"], ["plot"], ["report"]])
def test_readers_refuse_a_tampered_report_in_one_line(a_run, tmp_path, capsys, case, command):
    """Each crashed a reader with an internal error (exit 70); the report is now checked where it is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    edit_df, edit_meta, match = REPORT_TAMPERING[case]
    t = pq.read_table(a_run / "report.parquet")
    if edit_df is not None:
        t = pa.Table.from_pandas(edit_df(t.to_pandas()), preserve_index=False).replace_schema_metadata(
            t.schema.metadata)
    if edit_meta is not None:
        md = dict(t.schema.metadata)
        md[b"memscan"] = json.dumps(_tamper_meta(json.loads(md[b"memscan"]), edit_meta)).encode()
        t = t.replace_schema_metadata(md)
    p = tmp_path / "run" / "report.parquet"
    p.parent.mkdir()
    pq.write_table(t, p)
    extra = {"plot": ["--out", str(tmp_path / "plots")], "report": ["--out", str(tmp_path / "r.html")]}
    fails(capsys, [command[0], str(p), *command[1:], *extra.get(command[0], [])], match=match)
