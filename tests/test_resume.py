"""Checkpoints, resume after SIGKILL / Ctrl-C, a full disk, out of memory, and the memory-mapped cache."""
import errno
import re
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from memscan.cli import main
from memscan.config import RunConfig
from memscan.errors import ConfigError, OutputError, OutputExistsError, TrainingError
from memscan.pipeline import run
from memscan.run_folder import CHECKPOINT, RunFolder
from memscan.report import read_report

from helpers import checkpoint_dict, digits_folder

CFG = dict(max_epochs=8, stop="none", batch_size=16, image_size=8, augment="crop-flip", min_epochs=1)
ARGS = ["--max-epochs", "8", "--stop", "none", "--batch-size", "16", "--image-size", "8", "--min-epochs", "1"]
COMPARED = ["label", "pred", "csg", "sgal", "csl", "aum", "forgetting", "learning_time", "mislabel_score",
            "memorization_score", "category"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits_folder(tmp_path_factory.mktemp("d") / "digits", per_class=90, classes=4, flip_every=9)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run, in a subprocess like the interrupted ones (same threads, same kernels)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    p = subprocess.run(cli(data, out), env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return read_report(out).to_pandas()


def load_checkpoint(out):
    return RunFolder(out).load_checkpoint()


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def cli(data, out, *extra):
    return [sys.executable, "-m", "memscan", "run", str(data), "--out", str(out), "-q", *ARGS, *extra]


def same_report(a, b):
    for c in COMPARED:
        if a[c].dtype.kind == "f":
            np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-6, atol=1e-9, err_msg=c)
        else:
            assert (a[c].to_numpy() == b[c].to_numpy()).all(), c


def wait_for(path, proc, timeout=120):
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() - t < timeout
        time.sleep(0.005)


def test_sigkill_mid_run_then_resume_gives_the_same_report(data, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(data, out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(out / "trajectories" / "epoch-0002.parquet", proc)   # epoch 3 done: killed inside epoch 4 (or
    proc.send_signal(signal.SIGKILL)                              # while its checkpoint is being written)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (out / "report.parquet").exists()
    ck = load_checkpoint(out)                                     # never a corrupt checkpoint
    assert ck is not None and 1 <= ck["epoch"] <= 6
    p = subprocess.run([sys.executable, "-m", "memscan", "resume", str(out), "--json"], env=env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    same_report(read_report(out).to_pandas(), reference)
    assert not (out / CHECKPOINT).exists() and not list(out.glob("*.tmp*"))
    assert len(list((out / "trajectories").glob("epoch-*.parquet"))) == 8


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(data, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(data, out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(out / "trajectories" / "epoch-0001.parquet", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"memscan resume {out}" in " ".join(err.split())
    # --resume on the run command works too, with the saved options (no need to repeat them)
    p = subprocess.run([sys.executable, "-m", "memscan", "run", str(data), "--out", str(out), "--resume", "-q"],
                       env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    same_report(read_report(out).to_pandas(), reference)


def test_full_disk_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    import memscan.files as files
    out = tmp_path / "run"
    cfg = RunConfig(**CFG)
    real_write, calls = files.Path.write_bytes, []

    def write_bytes(self, data):
        if self.name.startswith(CHECKPOINT + ".tmp"):
            calls.append(self)
            if len(calls) == 3:
                real_write(self, b"partial")        # half a file, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(files.Path, "write_bytes", write_bytes)
    with pytest.raises(OutputError, match="No space left on device.*previous checkpoint.*is intact.*memscan resume"):
        run(data, cfg, out=out)
    assert load_checkpoint(out)["epoch"] == 1 and [p.name for p in out.glob(CHECKPOINT + "*")] == [CHECKPOINT]
    monkeypatch.setattr(files.Path, "write_bytes", real_write)
    res = run(data, cfg, out=out, resume=True)
    fresh = run(data, cfg, out=tmp_path / "fresh")
    same_report(read_report(res.report_path).to_pandas(), read_report(fresh.report_path).to_pandas())


def test_resume_refuses_changed_options_and_finished_runs(data, tmp_path):
    cfg = RunConfig(**dict(CFG, max_epochs=2))
    out = tmp_path / "run"
    run(data, cfg, out=out)
    with pytest.raises(OutputExistsError, match="already finished"):
        run(data, cfg, out=out, resume=True)
    (out / "report.parquet").unlink()
    saved = cfg.resolved().to_dict()    # as a run saves it: the stem and threshold it used
    assert (saved["stem"], saved["rank_threshold"]) == ("whiten", 0.9)
    torch.save(checkpoint_dict(config=saved), out / CHECKPOINT)
    with pytest.raises(ConfigError, match=r"differ from the interrupted run in lr \(was"):
        run(data, cfg.replace(lr=0.01), out=out, resume=True)
    with pytest.raises(ConfigError, match="dataset changed"):
        run(data, cfg, out=out, resume=True)
    # a checkpoint written before an option existed (here: annealing) is not "different options"
    older = {k: v for k, v in saved.items() if not k.startswith("anneal")}
    torch.save(checkpoint_dict(config=older), out / CHECKPOINT)
    with pytest.raises(ConfigError, match="dataset changed"):
        run(data, cfg, out=out, resume=True)
    with pytest.raises(ConfigError, match="no run folder"):
        run(data, cfg, out=tmp_path / "none", resume=True)
    assert not (tmp_path / "none").exists()
    assert main(["resume", str(tmp_path / "none")]) == 2


def test_out_of_memory_is_a_clear_error(data, tmp_path, monkeypatch):
    import memscan.train as train

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "train_step", oom)
    with pytest.raises(TrainingError, match=r"out of memory on cpu at batch size 16.*--batch-size \(e.g. 8\)"):
        run(data, RunConfig(**CFG), out=tmp_path / "run")


def test_memory_mapped_cache_gives_the_same_report(data, tmp_path, monkeypatch):
    cfg = RunConfig(**dict(CFG, max_epochs=3))
    a = run(data, cfg, out=tmp_path / "ram", cache_dir=tmp_path / "c1")
    b = run(data, cfg.replace(cache_memory=0), out=tmp_path / "mapped", cache_dir=tmp_path / "c2")
    from memscan.report import read_metadata
    assert read_metadata(b.report_path).dataset.memory_mapped is True
    assert read_metadata(a.report_path).dataset.memory_mapped is False
    same_report(read_report(a.report_path).to_pandas(), read_report(b.report_path).to_pandas())
    import memscan.data.cache as cache

    def decode_again(*a, **k):
        raise AssertionError("the mapped cache was decoded again instead of read")
    monkeypatch.setattr(cache, "_decode_into", decode_again)   # not a timing: a loaded machine makes those flake
    c = run(data, cfg.replace(cache_memory=0), out=tmp_path / "mapped2", cache_dir=tmp_path / "c2")
    assert read_metadata(c.report_path).dataset.memory_mapped is True
    same_report(read_report(a.report_path).to_pandas(), read_report(c.report_path).to_pandas())


def test_mapped_decode_compacts_skipped_images(tmp_path):
    from memscan.data import load_images, load_index
    d = digits_folder(tmp_path / "d", per_class=10, classes=2)
    bad = sorted((d / "c0").iterdir())[3]
    bad.write_bytes(b"not an image")
    t = load_index(d)
    ram = load_images(t, image_size=8, cache_dir=tmp_path / "c1")
    mm = load_images(t, image_size=8, cache_dir=tmp_path / "c2", memory_bytes=0)
    assert isinstance(mm.images, np.memmap) and not isinstance(ram.images, np.memmap)
    assert mm.images.shape[0] == 19 and np.array_equal(np.asarray(mm.images), ram.images)
    assert [s["path"] for s in mm.skipped] == [str(bad.relative_to(d))]
    assert not list((tmp_path / "c2").glob("*.tmp*"))


# ---------------------------------------------------------------- a tampered run folder (adversarial review)
def interrupted_run(data, out, epochs):
    """A run folder as an interruption after its last training epoch leaves it: checkpoint, no report."""
    import memscan.run_folder as rf
    finish = rf.RunFolder.finish
    rf.RunFolder.finish = lambda self: None   # keep the checkpoint, as a kill before the report would
    try:
        run(data, RunConfig(**dict(CFG, max_epochs=epochs)), out=out)
    finally:
        rf.RunFolder.finish = finish
    (out / "report.parquet").unlink()
    assert (out / CHECKPOINT).exists()
    return out


@pytest.fixture(scope="module")
def interrupted(data, tmp_path_factory):
    return interrupted_run(data, tmp_path_factory.mktemp("intr") / "run", 3)


def tampered_copy(src, dest, edit):
    import shutil
    shutil.copytree(src, dest, symlinks=True)
    edit(dest)
    return dest


def edit_checkpoint(change):
    def edit(out):
        ck = torch.load(out / CHECKPOINT, weights_only=True)
        change(ck)
        torch.save(ck, out / CHECKPOINT)
    return edit


def replace_with_fifo(name):
    def edit(out):
        (out / name).unlink()
        os.mkfifo(out / name)
    return edit


def rewrite_epoch(change):
    def edit(out):
        import pyarrow.parquet as pq
        f = out / "trajectories" / "epoch-0000.parquet"
        pq.write_table(change(pq.read_table(f)), f)
    return edit


def set_run_arg(key, value):
    def edit(out):
        import json
        args = json.loads((out / "run-args.json").read_text())
        args[key] = value
        (out / "run-args.json").write_text(json.dumps(args))
    return edit


TAMPERED = {
    "checkpoint a pipe": (replace_with_fifo(CHECKPOINT), "not a regular file"),
    "run-args a pipe": (replace_with_fifo("run-args.json"), "not a regular file"),
    "lock a pipe": (replace_with_fifo("memscan.lock"), "lock file .* not a regular file"),
    "marker a pipe": (replace_with_fifo("memscan-run.json"), "not a memscan run folder"),
    "negative epoch": (edit_checkpoint(lambda ck: ck.update(epoch=-3)), "not a memscan checkpoint"),
    "epoch past the run": (edit_checkpoint(lambda ck: ck.update(epoch=10 ** 6)), "epoch 1000001 of a run of at most 3"),
    "string epoch": (edit_checkpoint(lambda ck: ck.update(epoch="1")), "not a memscan checkpoint"),
    "other head": (edit_checkpoint(lambda ck: ck["model"].update({"head.weight": torch.zeros(5, 128)})),
                   "does not fit this run"),
    "no optimizer state": (edit_checkpoint(lambda ck: ck.update(optimizer={})), "different layout"),
    "stop rule of 3 samples": (edit_checkpoint(lambda ck: ck["rule"].update(cum_margin=torch.zeros(3))),
                               "does not fit this run"),
    "rng not bytes": (edit_checkpoint(lambda ck: ck.update(rng=torch.zeros(3))), "not a memscan checkpoint"),
    "epoch file cut to 5 rows": (rewrite_epoch(lambda t: t.slice(0, 5)), "has 5 rows"),
    "epoch file without loss": (rewrite_epoch(lambda t: t.drop(["loss"])), "lacks or mistypes loss"),
    "epoch file missing": (lambda out: (out / "trajectories" / "epoch-0001.parquet").unlink(), "is missing"),
    "folder at a later epoch file": (lambda out: (out / "trajectories" / "epoch-0009.parquet").mkdir(),
                                     "is a folder where memscan keeps a file"),
    "cache_dir a number": (set_run_arg("cache_dir", 1), "invalid cache_dir"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_run_folder_fails_resume_in_one_line(interrupted, tmp_path, capsys, case):
    """Each gave a hang or an internal error (exit 70), or resumed into a wrong report; now exit 2, one line."""
    edit, message = TAMPERED[case]
    out = tampered_copy(interrupted, tmp_path / "run", edit)
    assert main(["resume", str(out), "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(message, err), err
    assert "Traceback" not in err and not (out / "report.parquet").exists()


def test_the_untouched_interrupted_folder_resumes(interrupted, tmp_path):
    out = tampered_copy(interrupted, tmp_path / "run", lambda out: None)
    assert main(["resume", str(out), "-q"]) == 0 and (out / "report.parquet").exists()


def test_a_dataset_with_an_unreadable_image_resumes(data, tmp_path):
    """The checkpoint kept the decoded table's fingerprint, which leaves unreadable images out, and resume compared
    it with the index's: such a dataset was always 'changed' and could never be resumed."""
    import shutil
    d = tmp_path / "data"
    shutil.copytree(data, d)
    (d / "c0" / "broken.png").write_bytes(b"\x89PNG, but not an image")
    out = interrupted_run(d, tmp_path / "run", 2)
    assert main(["resume", str(out), "-q"]) == 0 and (out / "report.parquet").exists()


def test_a_whitened_run_killed_and_resumed_gives_the_same_report(data, tmp_path):
    """The fixed stem is rebuilt from the data on resume; the checkpoint's weights and optimizer (which holds no
    state for it) must fit it exactly."""
    ref = tmp_path / "ref"
    p = subprocess.run(cli(data, ref, "--stem", "whiten"), env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(data, out, "--stem", "whiten"), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    wait_for(out / "trajectories" / "epoch-0002.parquet", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "report.parquet").exists()
    p = subprocess.run([sys.executable, "-m", "memscan", "resume", str(out), "--json"], env=env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert RunFolder(out).load_args()["config"]["stem"] == "whiten"
    same_report(read_report(out).to_pandas(), read_report(ref).to_pandas())
