"""Stop-signal study: one long run that records everything, analysed offline.

Trains with --stop none for E epochs on a noisy subset of a ../shared/data Parquet set, with a
held-out validation set, and saves per epoch: the trajectories (in-loop signals), plus an
eval-mode exact pass (exact grad_sq and probabilities). ``analyse_stop_study.py`` then asks: for
each candidate stop signal, where would it stop, and what AUROC does each score reach there?

    python research/stop_signal_study.py cifar10 --per-class 1000 --epochs 25 --out bench-out/cifar
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from memscan.config import RunConfig
from memscan.data import inject_noise, load_images, load_index
from memscan.data.loader import InMemorySource, channel_stats
from memscan.models import create_model
from memscan.signals import Recorder
from memscan.train import exact_pass, fit, resolve_precision
from memscan.trajectories import write_epoch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def subset(table, per_class, seed=0):
    rng = np.random.default_rng(seed)
    keep = np.concatenate([np.sort(rng.permutation(np.flatnonzero(table.labels == c))[:per_class])
                           for c in range(table.num_classes)])
    return table.subset(np.sort(keep))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", choices=["cifar10", "mnist"])
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--val-per-class", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--kind", default="symmetric")
    ap.add_argument("--schedule", default="constant")
    ap.add_argument("--model", default="memscan-cnn")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--augment", default=None)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--signal", default="inloop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--no-exact", action="store_true", help="skip the per-epoch eval pass (faster)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    train = subset(load_index(DATA / a.dataset / "train.parquet"), a.per_class)
    val = subset(load_index(DATA / a.dataset / "test.parquet"), a.val_per_class)
    dtr, dval = load_images(train), load_images(val)
    noisy = inject_noise(dtr.table.labels, train.num_classes, rate=a.rate, kind=a.kind, seed=a.seed)
    augment = a.augment or ("crop-flip" if a.dataset == "cifar10" else "crop")
    cfg = RunConfig(model=a.model, max_epochs=a.epochs, stop="none", schedule=a.schedule, lr=a.lr,
                    augment=augment, seed=a.seed, precision=a.precision, signal=a.signal,
                    batch_size=a.batch_size)
    mean, std = channel_stats(dtr.images)
    src = InMemorySource(dtr.images, noisy.labels, mean=mean, std=std, channels_last=True)
    vsrc = InMemorySource(dval.images, dval.table.labels, mean=mean, std=std, channels_last=True)
    model = create_model(a.model, train.num_classes).to(memory_format=torch.channels_last)
    dtype = resolve_precision(cfg.precision, torch.device("cpu"))
    exact = {"grad_sq": [], "p_given": [], "pred": [], "seconds": []}

    def on_epoch(summary):
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}),
              flush=True)
        if a.no_exact:
            return
        t = time.perf_counter()
        g, p = exact_pass(model, src, batch_size=512, dtype=dtype, want_probs=True)
        exact["grad_sq"].append(g)
        exact["p_given"].append(p[np.arange(len(p)), noisy.labels])
        exact["pred"].append(p.argmax(1))
        exact["seconds"].append(time.perf_counter() - t)

    t0 = time.perf_counter()
    res = fit(model, src, cfg, recorder=Recorder(len(src)), on_record=lambda r: write_epoch(a.out / "traj", r),
              on_epoch=on_epoch, val_source=vsrc)
    np.savez_compressed(a.out / "exact.npz", flipped=noisy.flipped, labels=noisy.labels,
                        true_labels=dtr.table.labels, **{k: np.array(v) for k, v in exact.items()})
    (a.out / "curves.json").write_text(json.dumps({"curves": res.curves, "args": vars(a) | {"out": str(a.out)},
                                                   "total_seconds": time.perf_counter() - t0}, indent=1))
    print("done", time.perf_counter() - t0)


if __name__ == "__main__":
    main()
