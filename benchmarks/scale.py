"""memscan at scale: per-sample state, report and rank speed at 1.28 M samples; peak RSS of real runs.

    # the O(N) parts at ImageNet size, on synthetic per-sample values (no images needed):
    python benchmarks/scale.py per-sample --n 1280000 --epochs 15 --classes 100
    # scoring with 1.28 M x 1000 class probabilities memory-mapped from disk (what memscan does above 1 GiB)
    python benchmarks/scale.py probs --n 1280000 --classes 1000 --on-disk
    # peak RSS of `memscan run` (1 epoch) on CIFAR-10 subsets, decoded images in RAM vs memory-mapped:
    python benchmarks/scale.py rss --per-class 1250,2500,5000

Writes JSON on stdout. Timings are wall seconds on this machine; RSS from getrusage / /usr/bin/time.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "train.parquet"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def per_sample(a):
    from memscan.report import DatasetInfo, ReportMeta, StopInfo, build_table
    from memscan.run_folder import RunFolder
    from memscan.scores import accumulate, compute_scores
    from memscan.signals import Recorder
    from memscan.trajectories import read_epochs, write_epoch
    from memscan.data.index import SampleTable

    n, k = a.n, a.classes
    rng = np.random.default_rng(0)
    out = {"n": n, "epochs": a.epochs, "classes": k, "rss_start_mb": rss_mb()}
    labels = rng.integers(0, k, n)
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        tmp = Path(tmp)
        rec = Recorder(n)
        t = time.perf_counter()
        for ep in range(a.epochs):   # the loop's calls: one record() per batch of 256, then end_epoch + write
            rec.start_epoch(ep)
            order = torch.randperm(n)
            for s in range(0, n, 256):
                idx = order[s:s + 256]
                b = len(idx)
                rec.record(idx, grad_sq=torch.rand(b), loss=torch.rand(b) * 3, margin=torch.randn(b),
                           correct=torch.rand(b) < 0.7)
            write_epoch(tmp / "trajectories", rec.end_epoch())
        out["record_and_write_s_per_epoch"] = (time.perf_counter() - t) / a.epochs
        out["trajectory_mb_per_epoch"] = sum(f.stat().st_size for f in (tmp / "trajectories").iterdir()) / 2**20 / a.epochs
        out["rss_after_recording_mb"] = rss_mb()
        t = time.perf_counter()
        sig = accumulate(read_epochs(tmp / "trajectories"), n, peak_epoch=None, window_start=a.epochs // 2)
        out["accumulate_s"] = time.perf_counter() - t
        probs = rng.dirichlet(np.full(k, 0.3), size=n).astype(np.float32)
        t = time.perf_counter()
        scores = compute_scores(sig, probs, labels)
        out["scores_s"] = time.perf_counter() - t
        del probs
        table = SampleTable(paths=[f"class{labels[i]:03d}/img{i:08d}.JPEG" for i in range(n)], labels=labels,
                            class_names=[f"class{c:03d}" for c in range(k)], root=tmp / "data", source="folder",
                            location=tmp / "data")   # not on disk: the report readers only see its name
        t = time.perf_counter()
        meta = ReportMeta(memscan_version="scale", config={}, curves={},
                          dataset=DatasetInfo(location=str(tmp / "data"), source="folder", n=n,
                                              classes=table.class_names, fingerprint="synthetic", image_size=224),
                          stop=StopInfo(reason="synthetic", epochs_trained=a.epochs, peak_epoch=None,
                                        csg_epochs=a.epochs, mislabel_window=[a.epochs // 2 + 1, a.epochs]))
        rt = build_table(table, labels, sig, scores, meta)
        run = RunFolder.start(tmp / "run")
        run.write_table(rt, run.report)
        run.release()
        run = run.path
        out["report_write_s"] = time.perf_counter() - t
        out["report_mb"] = (run / "report.parquet").stat().st_size / 2**20
        out["rss_after_report_mb"] = rss_mb()
        del rt, table, sig, scores
        for name, args in (("rank_top500", ["rank", str(run), "--top", "500", "--format", "csv"]),
                           ("rank_summary", ["rank", str(run), "--summary", "--format", "json"]),
                           ("check", ["check", str(run), "--max-mislabeled", "0.1"]),
                           ("report_html", ["report", str(run), "--out", str(tmp / "r.html")])):
            t = time.perf_counter()
            p = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "memscan", *args],
                               capture_output=True, text=True)
            out[f"cli_{name}_s"] = time.perf_counter() - t
            out[f"cli_{name}_rss_mb"] = int(p.stderr.strip().splitlines()[-1]) / 1024
            out[f"cli_{name}_rc"] = p.returncode
    return out


def _anon_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def probs(a):
    """Scoring with N x K class probabilities in RAM or memory-mapped from the run folder (what
    ``pipeline.probability_buffer`` picks above 1 GiB): time and peak anonymous memory."""
    import threading

    from memscan.pipeline import probability_buffer
    from memscan.run_folder import RunFolder
    from memscan.scores import Signals, compute_scores
    n, k = a.n, a.classes
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, n)
    x = rng.random(n)
    sig = Signals(csg=x, sgal=x, csl=x, aum=x - 0.5, forgetting=np.zeros(n, np.int32),
                  learning_time=np.zeros(n, np.int32), epochs=10, peak_epochs=10)
    peak = {"anon": _anon_mb()}
    done = threading.Event()

    def poll():
        while not done.wait(0.05):
            peak["anon"] = max(peak["anon"], _anon_mb())
    threading.Thread(target=poll, daemon=True).start()
    out = {"n": n, "classes": k, "probs_gb": n * k * 4 / 2**30, "on_disk": a.on_disk, "anon_start_mb": _anon_mb()}
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        import contextlib
        with (probability_buffer(RunFolder(tmp), n, k, memory_bytes=0) if a.on_disk
              else contextlib.nullcontext(np.empty((n, k), dtype=np.float32))) as buf:   # all in RAM, to compare
            t = time.perf_counter()
            for s in range(0, n, 8192):   # as the prediction pass fills it: a batch at a time
                e = min(n, s + 8192)
                p = rng.random((e - s, k), dtype=np.float32) ** 8
                buf[s:e] = p / p.sum(1, keepdims=True)
            out["fill_s"] = time.perf_counter() - t
            t = time.perf_counter()
            compute_scores(sig, buf, labels)
            out["scores_s"] = time.perf_counter() - t
            del buf
    done.set()
    out["peak_anon_mb"] = max(peak["anon"], _anon_mb())
    out["peak_rss_mb"] = rss_mb()
    return out


def polled(cmd, env) -> dict:
    """Run ``cmd``, sampling /proc/PID/status: peak total RSS, and peak anonymous RSS (the memory that
    cannot be given back; memory-mapped image pages are file-backed and the kernel reclaims them)."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hwm = anon = 0
    status = Path(f"/proc/{p.pid}/status")
    while p.poll() is None:
        try:
            f = dict(line.split(":", 1) for line in status.read_text().splitlines())
            hwm = max(hwm, int(f["VmHWM"].split()[0]))
            anon = max(anon, int(f["RssAnon"].split()[0]))
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    out, err = p.communicate()
    assert p.returncode == 0, err[-2000:]
    return {"peak_rss_mb": hwm / 1024, "peak_anon_rss_mb": anon / 1024, "stdout": out}


def rss(a):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from memscan.data import load_index
    t = load_index(DATA)
    res = []
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        tmp = Path(tmp)
        for pc in [int(x) for x in a.per_class.split(",")]:
            keep = np.sort(np.concatenate([np.flatnonzero(t.labels == c)[:pc] for c in range(t.num_classes)]))
            s = t.subset(keep)
            (tmp / f"d{pc}").mkdir()
            if a.folder:   # an image folder: the index holds paths only, so only the pixels can be big
                manifest = tmp / f"d{pc}" / "images"
                subprocess.run([sys.executable, str(DATA.parents[1] / "materialize.py"), str(DATA), str(manifest),
                                "--per-class", str(pc)], check=True, capture_output=True)
            else:
                manifest = tmp / f"d{pc}" / "subset.parquet"
                pq.write_table(pa.table({"path": s.paths, "label": s.labels,
                                         "image": pa.array(s.image_bytes, pa.binary())}), manifest)
            env = dict(os.environ, MEMSCAN_CACHE_DIR=str(tmp / "cache"))
            base = [sys.executable, "-m", "memscan", "run", str(manifest), "--max-epochs", "1", "--stop", "none",
                    "-q", "--json", "--overwrite"]
            subprocess.run(base + ["--out", str(tmp / "warm")], env=env, capture_output=True, check=True)
            for mode, extra in (("ram", []), ("mapped", ["--cache-memory", "0"])):
                t0 = time.perf_counter()
                peak = polled(base + ["--out", str(tmp / mode)] + extra, env)
                summ = json.loads(peak.pop("stdout"))
                res.append({"n": len(s), "mode": mode, **peak, "wall_s": time.perf_counter() - t0,
                            "train_s": summ["timings"]["train_s"], "images_mb": len(s) * 3 * 32 * 32 / 2**20})
                print(json.dumps(res[-1]), file=sys.stderr)
    return {"runs": res}


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("per-sample")
    p.add_argument("--n", type=int, default=1_280_000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--tmp", default=None)
    q = sub.add_parser("probs")
    q.add_argument("--n", type=int, default=1_280_000)
    q.add_argument("--classes", type=int, default=1000)
    q.add_argument("--on-disk", action="store_true")
    q.add_argument("--tmp", default=None)
    r = sub.add_parser("rss")
    r.add_argument("--per-class", default="1250,2500,5000")
    r.add_argument("--tmp", default=None)
    r.add_argument("--folder", action="store_true", help="materialize an image folder instead of a bytes manifest")
    a = ap.parse_args()
    out = {"per-sample": per_sample, "probs": probs, "rss": rss}[a.what](a)
    out["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
