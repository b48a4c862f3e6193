"""torchrun with 2 CPU processes (gloo): the same loop, every sample once per epoch, one report."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from memscan.config import RunConfig
from memscan.pipeline import run
from memscan.report import read_metadata, read_report
from memscan.signals import Recorder

from helpers import digits_folder

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend")
ARGS = ["--max-epochs", "6", "--stop", "none", "--image-size", "8", "--min-epochs", "1", "-q"]


def torchrun(*args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
            str(29500 + os.getpid() % 1000), "-m", "memscan", *args]


def failure(p) -> str:
    """What a failed torchrun said: every rank's error lines (torchrun's own summary, which ends stderr, names only
    the signal of the rank that died first), then the tail."""
    keys = ("Error", "error", "Traceback", "terminate", "what()", "Exception", "gloo")
    lines = [line for line in p.stderr.splitlines() if any(k in line for k in keys)]
    return "\n".join(lines)[:3000] + "\n--- tail ---\n" + p.stderr[-1500:]


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", MEMSCAN_DIST_TIMEOUT="60")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits_folder(tmp_path_factory.mktemp("d") / "digits", per_class=90, classes=4, flip_every=9)


def flipped(df):
    return np.array([int(Path(p).stem) % 9 == 0 for p in df["path"]])   # digits_folder's flip rule


def test_two_processes_cover_every_sample_once_and_agree_with_one(data, tmp_path):
    out = tmp_path / "ddp"
    # 2 processes x batch 16 = the global batch 32 of the single-process run below
    p = subprocess.run(torchrun("run", str(data), "--out", str(out), "--batch-size", "16", *ARGS), env=env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, failure(p)
    meta = read_metadata(out)
    assert meta.processes == 2 and meta.stop.epochs_trained == 6
    for f in sorted((out / "trajectories").glob("epoch-*.parquet")):   # reduced once per epoch: all N, once each
        t = pq.read_table(f).to_pandas()
        assert len(t) == 360 and not t["loss"].isna().any() and not t["grad_sq"].isna().any(), f.name
    ddp = read_report(out).to_pandas()
    one = read_report(run(data, RunConfig(max_epochs=6, stop="none", image_size=8, min_epochs=1, batch_size=32),
                          out=tmp_path / "one").report_path).to_pandas()
    assert (ddp["path"] == one["path"]).all()
    rho = spearmanr(ddp["mislabel_score"], one["mislabel_score"]).correlation
    # measured 0.74; two single-process seeds agree to 0.73 on this data: DDP differs no more than a reseed
    assert rho > 0.6, rho
    for df in (ddp, one):   # measured 0.966 (DDP) and 0.957 (one process)
        assert roc_auc_score(flipped(df), df["mislabel_score"]) > 0.9


def test_recorder_all_reduce_refuses_double_counting():
    """The reduction itself, in one gloo process group of size 1: values pass through, NaN stays NaN."""
    import torch.distributed as dist
    if dist.is_initialized():
        pytest.skip("a process group is already running")
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        r = Recorder(4)
        r.start_epoch(0)
        # sample 3 seen, its input gradient not taken (--input-grad-every): it must stay missing, not become 0
        r.record(torch.tensor([0, 2, 3]), grad_sq=torch.tensor([1.0, 2.0, float("nan")]),
                 loss=torch.tensor([0.5, 0.7, 0.1]), margin=torch.tensor([1.0, -1.0, 2.0]),
                 correct=torch.tensor([True, False, True]), pred=torch.tensor([0, 7, 1]))
        r.all_reduce()
        rec = r.end_epoch()
        assert rec.grad_sq[[0, 2]].tolist() == [1.0, 2.0] and np.isnan(rec.grad_sq[[1, 3]]).all()
        assert rec.correct.tolist() == [True, False, False, True] and rec.summary["seen"] == 3
        assert rec.pred.tolist() == [0, -1, 7, 1]
    finally:
        dist.destroy_process_group()


def test_a_dying_rank_ends_the_run_instead_of_hanging(data, tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.Popen(torchrun("run", str(data), "--out", str(out), "--batch-size", "16",
                                     *ARGS[:1], "40", *ARGS[2:]), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    t = time.time()
    # the first checkpoint, not the first trajectory file: killed between the two, no checkpoint would be left
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None and time.time() - t < 300, "run ended early"
        time.sleep(0.05)
    workers = [int(x) for x in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                              text=True).stdout.split()]
    rank1 = [w for w in workers if b"RANK=1\0" in Path(f"/proc/{w}/environ").read_bytes()]
    assert rank1, workers
    os.kill(rank1[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)            # not a hang: torchrun and rank 0 end within seconds
    assert proc.returncode != 0
    # rank 0 either notices the dead peer or is stopped by torchrun first: either way it says how to go on
    assert "lost contact with the other processes" in err or "interrupted" in err
    assert "memscan resume" in " ".join(err.split())
    assert not (out / "report.parquet").exists() and (out / "checkpoint.pt").exists()


def test_memorization_models_split_over_processes_give_the_single_process_estimate(tmp_path):
    """Under torchrun each process trains its own models (k on rank k mod 2); rank 0 writes one estimate,
    the same as one process's."""
    from memscan.memorization_run import read_memorization
    data = digits_folder(tmp_path / "d", per_class=20, classes=4)
    args = ["memorization", str(data), "--models", "4", "--epochs", "2", "--image-size", "8", "--precision", "fp32",
            "-q"]
    p = subprocess.run(torchrun(*args, "--out", str(tmp_path / "two")), env=env(), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, failure(p)
    one = subprocess.run([sys.executable, "-m", "memscan", *args, "--out", str(tmp_path / "one")], env=env(),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, failure(one)
    a, meta = read_memorization(tmp_path / "two")
    b, _ = read_memorization(tmp_path / "one")
    assert meta["models"] == 4 and len(a) == 80 and sorted((tmp_path / "two" / "models").iterdir()) != []
    np.testing.assert_allclose(a["memorization"], b["memorization"], atol=1e-5, equal_nan=True)
