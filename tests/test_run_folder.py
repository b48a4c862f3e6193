"""RunFolder: the marker, the lock, what --overwrite may remove, plain-dict checkpoints, run arguments."""
import json
import os
import subprocess
import sys

import pytest
import torch

from memscan.config import RunConfig
from memscan.dataset_guard import DatasetGuard
from memscan.errors import ConfigError, FolderInUseError, OutputExistsError, RunFolderError
from memscan.run_folder import CHECKPOINT, LOCK, MARKER, RunFolder, latest_run
from memscan.stopping import StopRule

from helpers import checkpoint_dict


def started(path, **kw):
    f = RunFolder.start(path, **kw)
    f.begun = True
    return f


def test_start_marks_and_locks_a_new_folder(tmp_path):
    f = started(tmp_path / "run")
    assert RunFolder.is_run(f.path)
    assert json.loads(f.marker.read_text())["tool"] == "memscan"
    with pytest.raises(FolderInUseError, match="in use by another memscan process .*pid"):
        RunFolder.start(f.path, overwrite=True)
    f.release()
    RunFolder.start(f.path, overwrite=True).release()   # free again once released


def test_the_lock_holds_across_processes(tmp_path):
    f = started(tmp_path / "run")
    code = ("import sys; from memscan.run_folder import RunFolder\n"
            "from memscan.errors import FolderInUseError\n"
            "try: RunFolder.start(sys.argv[1], overwrite=True)\n"
            "except FolderInUseError as e: print(e); sys.exit(75)\n")
    p = subprocess.run([sys.executable, "-c", code, str(f.path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 75 and f"pid {os.getpid()}" in p.stdout
    f.release()
    p = subprocess.run([sys.executable, "-c", code, str(f.path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_failed_start_leaves_the_folder_as_found(tmp_path):
    f = RunFolder.start(tmp_path / "new")
    f.release(failed=True)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    RunFolder.start(tmp_path / "empty").release(failed=True)
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_overwrite_removes_only_memscan_files(tmp_path):
    f = started(tmp_path / "run")
    for name in ("report.parquet", "run.json", "run-args.json", "model.pt", "epochs.parquet", "check.xml"):
        (f.path / name).write_text("old")
    (f.trajectories).mkdir()
    (f.trajectories / "epoch-0000.parquet").write_text("old")
    (f.trajectories / "mine.txt").write_text("user's")
    (f.path / "notes.txt").write_text("user's")
    (f.path / "sub").mkdir()
    (f.path / "sub" / "x.png").write_text("user's")
    (f.path / "report.parquet.tmp123").write_text("half")
    f.release()
    g = RunFolder.start(f.path, overwrite=True)
    left = g.reset()
    assert sorted(left) == ["notes.txt", "sub", "trajectories"]
    assert (f.trajectories / "mine.txt").exists() and not (f.trajectories / "epoch-0000.parquet").exists()
    assert (f.path / "sub" / "x.png").read_text() == "user's"
    assert {p.name for p in f.path.iterdir()} == {"notes.txt", "sub", "trajectories", MARKER, LOCK}
    g.release()


def test_overwrite_refuses_folders_memscan_did_not_start(tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text("{}")          # another tool's run.json is no marker
    (other / "report.parquet").write_text("x")
    with pytest.raises(OutputExistsError, match="not a memscan run"):
        RunFolder.start(other, overwrite=True)
    with pytest.raises(OutputExistsError, match="already exists"):
        RunFolder.start(other)
    assert sorted(p.name for p in other.iterdir()) == ["report.parquet", "run.json"]
    # never the current directory or a folder holding it, even when memscan started it
    f = started(tmp_path / "run")
    f.release()
    (f.path / "inside").mkdir()
    for cwd in (f.path, f.path / "inside"):
        monkeypatch.chdir(cwd)
        with pytest.raises(ConfigError, match="current directory"):
            RunFolder.start(f.path, overwrite=True)
    assert RunFolder.is_run(f.path)


def test_guard_refuses_folders_inside_or_around_the_dataset(tmp_path):
    data = tmp_path / "proj" / "data"
    (data / "a").mkdir(parents=True)
    guard = DatasetGuard.for_dataset("folder", data, data, [])
    for bad, match in ((data / "runs", "inside the dataset"), (data, "inside the dataset"),
                       (tmp_path / "proj", "contains the dataset"), (tmp_path, "contains the dataset")):
        with pytest.raises(ConfigError, match=match):
            RunFolder.start(bad, guard=guard)
    assert not (data / "runs").exists()
    # a manifest: only the manifest and the files it lists are the dataset
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x.png").write_bytes(b"")
    g = DatasetGuard.for_dataset("manifest", tmp_path / "m" / "d.csv", tmp_path / "m", ["x.png"])
    g.check_folder(tmp_path / "m" / "memscan-runs" / "r")            # beside the images: fine
    with pytest.raises(ConfigError, match="holds .* part of the dataset"):
        g.check_folder(tmp_path / "m")
    with pytest.raises(ConfigError, match="part of the dataset"):
        g.check_file(tmp_path / "m" / "x.png")


def test_checkpoint_is_plain_data_and_round_trips_the_stop_rule(tmp_path):
    cfg = RunConfig(stop_signal="auto", min_epochs=1)
    rule = StopRule(cfg)
    import numpy as np

    class Rec:
        def __init__(self, m):
            self.margin = np.asarray(m, np.float32)

    for e, m in enumerate(([-1, 2, 3, -2], [-1, 2, 3, 1], [-1, 2, -3, 1])):
        rule.update(Rec(m), {"weight_norm": 1.0 + e})
    f = started(tmp_path / "run")
    f.save_checkpoint(checkpoint_dict(epoch=2, config=cfg.to_dict(), fingerprint="f", rule=rule.state_dict(),
                                      curves=[{"loss_mean": 1.0, "val_loss": float("nan")}]))
    ck = f.load_checkpoint()        # weights_only=True inside: it would refuse any live object
    again = StopRule(cfg)
    again.load_state_dict(ck["rule"])
    assert again.state_dict()["epochs"] == 3 and again.rank.values == rule.rank.values
    nxt = {"weight_norm": 4.0}
    assert again.update(Rec([-1, 2, -3, 1]), dict(nxt)) == rule.update(Rec([-1, 2, -3, 1]), dict(nxt))
    assert again.rank.values == rule.rank.values and again.reason == rule.reason
    f.release()


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):            # what a planted checkpoint would do on an unsafe load
        return (os.mkdir, (self.target,))


def test_planted_checkpoint_does_not_run_code(tmp_path):
    f = started(tmp_path / "run")
    target = tmp_path / "pwned"
    torch.save({"epoch": 0, "config": {}, "fingerprint": "x", "payload": _Payload(str(target))}, f.checkpoint)
    with pytest.raises(RunFolderError, match="not a memscan checkpoint|unreadable"):
        f.load_checkpoint()
    assert not target.exists()
    f.release()


@pytest.mark.parametrize("content, match", [("{not json", "damaged"), ("[]", "lacks"),
                                            ('{"dataset": "d"}', "lacks")])
def test_damaged_run_arguments_are_a_clear_error(tmp_path, content, match):
    f = started(tmp_path / "run")
    f.run_args.write_text(content)
    with pytest.raises(RunFolderError, match=match):
        f.load_args()
    args = {"dataset": "d", "config": {"lr": "fast"}, "path_column": None, "label_column": None,
            "cache_dir": None, "val_dataset": None, "relabelled": False}
    f.run_args.write_text(json.dumps(args))
    with pytest.raises(RunFolderError, match="invalid config"):
        f.load_args()
    f.release()


def test_resume_needs_a_marked_folder_and_cleans_cut_writes(tmp_path):
    with pytest.raises(ConfigError, match="no run folder"):
        RunFolder.resume(tmp_path / "none")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunFolderError, match="not a memscan run folder"):
        RunFolder.resume(tmp_path / "plain")
    f = started(tmp_path / "run")
    f.release()
    (f.path / (CHECKPOINT + ".tmp77")).write_bytes(b"half")
    f.trajectories.mkdir()
    (f.trajectories / "epoch-0003.parquet.tmp77").write_bytes(b"half")
    g = RunFolder.resume(f.path)
    assert not list(f.path.rglob("*.tmp*"))
    g.release()


def test_latest_run(tmp_path):
    with pytest.raises(Exception, match="no runs under"):
        latest_run(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.parquet").write_text("x")
    os.utime(tmp_path / "a" / "report.parquet", (1e9, 1e9))
    assert latest_run(tmp_path) == tmp_path / "b"


def test_links_inside_a_run_folder_are_never_followed(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "epoch-0000.parquet").write_text("keep")
    (precious / "file.txt").write_text("keep")
    f = started(tmp_path / "run")
    f.release()
    f.trajectories.symlink_to(precious, target_is_directory=True)
    with pytest.raises(RunFolderError, match="link"):
        RunFolder.start(f.path, overwrite=True)
    f.trajectories.unlink()
    (f.path / LOCK).unlink()
    (f.path / LOCK).symlink_to(precious / "file.txt")
    with pytest.raises(RunFolderError, match="lock file"):
        RunFolder.start(f.path, overwrite=True)
    (f.path / LOCK).unlink()
    (f.path / "report.parquet").symlink_to(precious / "file.txt")   # a link named like memscan's file: the link goes
    g = RunFolder.start(f.path, overwrite=True)
    g.reset()
    g.release()
    assert (precious / "file.txt").read_text() == "keep" and (precious / "epoch-0000.parquet").read_text() == "keep"
