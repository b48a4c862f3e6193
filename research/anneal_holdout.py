"""Can the annealing epoch give memscan some of cleanlab's out-of-sample edge, at no extra cost? (issue 13,
point 3: human-like noise from scratch, where cleanlab's 5-fold probabilities rank better than one run).

cleanlab predicts each image with a model that never trained on it; memscan's stop point has trained on every
image for 6-8 epochs, and its annealing epoch fits the given labels further, the flipped ones included. Here
the annealing epoch is replayed from a run's stop point (a run made with ``--anneal-epochs 0``, so its
``model.pt`` is the stop model) in ways that keep some images out of it:

* ``all``: the shipped annealing epoch (every image, lr x 0.1), for reference;
* ``skip-top-Q``: anneal on every image but the fraction Q the trajectory statistic ranks most suspicious;
* ``halves``: two copies of the stop model, each annealed on one stratified half and predicting the other
  (the same cost as one epoch over all images; every image is predicted by a model that did not anneal on it);
* ``halves-lr1``: the same at the run's full rate (forgetting what the other half's images taught it).

Each variant's probabilities (flip TTA, as ``memscan run`` predicts) are blended with the run's own trajectory
statistic as ``compute_scores`` does; AUROC of the blend at weight 0.5 (shipped) and 0.7, and of 1 - p(given).

    python research/anneal_holdout.py RUN[:TRUTH_CSV] ... --json research/results/anneal-holdout-machineA.json

TRUTH_CSV: ``path,flipped`` (default: the run folder's ``truth-flipped.csv``).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from memscan.config import RunConfig, saved_config
from memscan.data import load_index
from memscan.evaluate import detection_metrics
from memscan.models import load_state_dict_file
from memscan.prepare import prepare
from memscan.report import read_metadata
from memscan.scores import accumulate, mislabel_statistic, percentile
from memscan.signals import Recorder
from memscan.train import fit, predict_probs
from memscan.trajectories import read_epochs


def load(spec: str):
    run, _, truth_csv = spec.partition(":")
    run = Path(run)
    args = json.loads((run / "run-args.json").read_text())
    cfg = RunConfig.from_dict(saved_config(args["config"]))   # as the run trained: options it predates filled in
    prep = prepare(load_index(args["dataset"]), cfg)
    truth_df = pd.read_csv(truth_csv or run / "truth-flipped.csv").set_index("path")
    truth = truth_df.loc[list(prep.table.paths), "flipped"].to_numpy().astype(bool)
    meta = read_metadata(run)
    if meta.stop.anneal_epochs:
        raise SystemExit(f"{run} was annealed: replay needs a run made with --anneal-epochs 0")
    sig = accumulate(read_epochs(run / "trajectories"), len(prep.labels), peak_epoch=None,
                     window_start=meta.stop.mislabel_window[0] - 1)
    prep.model.load_state_dict(load_state_dict_file(run / "model.pt"))
    return cfg, prep, truth, sig


def anneal(model, src, cfg: RunConfig, lr_factor: float, seed: int):
    torch.manual_seed(seed)
    fit(model, src, cfg.replace(lr=cfg.lr * lr_factor, max_epochs=1, stop="none", warmup_epochs=0.0, seed=seed,
                                anneal_epochs=0), recorder=Recorder(len(src)))


def variant_probs(name: str, cfg, prep, stat_pct) -> np.ndarray:
    n = len(prep.labels)
    bs, flip = 512, cfg.flips
    if name == "stop":
        return predict_probs(prep.model, prep.source, batch_size=bs, dtype=torch.float32, flip=flip)
    if name == "all" or name.startswith("skip-top-"):
        model = copy.deepcopy(prep.model)
        keep = np.arange(n)
        if name != "all":
            q = float(name.removeprefix("skip-top-"))
            keep = np.flatnonzero(stat_pct < np.quantile(stat_pct, 1 - q))
        anneal(model, prep.subset(keep), cfg, 0.1, cfg.seed + 101)
        return predict_probs(model, prep.source, batch_size=bs, dtype=torch.float32, flip=flip)
    if name.startswith("halves"):
        from sklearn.model_selection import StratifiedKFold
        lr_factor = 1.0 if name == "halves-lr1" else 0.1
        probs = np.zeros((n, prep.table.num_classes), dtype=np.float32)
        split = StratifiedKFold(2, shuffle=True, random_state=cfg.seed).split(np.zeros(n), prep.labels)
        for k, (train_idx, eval_idx) in enumerate(split):
            model = copy.deepcopy(prep.model)
            anneal(model, prep.subset(train_idx), cfg, lr_factor, cfg.seed + 101 + k)
            probs[eval_idx] = predict_probs(model, prep.subset(eval_idx), batch_size=bs, dtype=torch.float32,
                                            flip=flip)
        return probs
    raise ValueError(name)


def replay(spec: str, variants) -> dict:
    cfg, prep, truth, sig = load(spec)
    labels = prep.labels
    stat_pct = percentile(mislabel_statistic(sig))
    res = {"run": spec, "n": len(labels), "true_fraction": round(float(truth.mean()), 4),
           "trajectory_auroc": round(detection_metrics(stat_pct, truth)["auroc"], 4)}
    for name in variants:
        t = time.perf_counter()
        probs = variant_probs(name, cfg, prep, stat_pct)
        p_given = probs[np.arange(len(labels)), labels]
        row = {"accuracy": round(float((probs.argmax(1) == labels).mean()), 4),
               "auroc_1-p_given": round(detection_metrics(1 - p_given, truth)["auroc"], 4),
               "seconds": round(time.perf_counter() - t, 1)}
        for w in (0.5, 0.7):
            blend = percentile((1 - w) * stat_pct + w * percentile(1 - p_given))
            row[f"auroc_blend_{w:g}"] = round(detection_metrics(blend, truth)["auroc"], 4)
        res[name] = row
        print(name, row, flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--variants", default="stop,all,skip-top-0.2,skip-top-0.4,halves,halves-lr1")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    results = []
    for spec in a.runs:
        results.append(replay(spec, a.variants.split(",")))
        if a.json:   # after every run: a long replay keeps what it has
            a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
