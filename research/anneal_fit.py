"""Does a short low-learning-rate phase after the stop make the ``mislabeled`` category trustworthy on
nearly clean data? (issue 13, item 4: "whether the model must be fitted further before categories are
decided").

A default run stops while the network is still far from fitted (about 70% of CIFAR-10's labels at the
stop): hard, correctly labelled images then look mislabeled to confident learning. Training on at a
tenth of the learning rate for a few epochs is the cheapest way to fit further (the classic step-decay
jump in training accuracy). This replays it on finished runs: load the stop point's ``model.pt``, train
``--epochs`` more at ``--lr-factor`` x the run's rate, predict again, and recompute the categories with
the run's own trajectory signals (the ranking window is unchanged) and the new probabilities.

    python research/anneal_fit.py bench-out/nearly-clean/cifar10-test/symmetric-0.02/seed-0 --epochs 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from memscan.config import RunConfig, saved_config
from memscan.data import load_index
from memscan.evaluate import detection_metrics, flag_metrics
from memscan.models import load_state_dict_file
from memscan.prepare import prepare
from memscan.report import read_metadata
from memscan.scores import accumulate, compute_scores, mislabel_statistic, percentile
from memscan.signals import Recorder
from memscan.train import fit, predict_probs
from memscan.trajectories import read_epochs


BLENDS = (0.2, 0.35, 0.5, 0.65)


def evaluate_probs(sig, probs, labels, truth, annealed):
    s = compute_scores(sig, probs, labels, annealed=annealed)
    flag = s["category"] == "mislabeled"
    out = {"accuracy": round(float((s["pred"] == labels).mean()), 4), "flagged": round(float(flag.mean()), 4)}
    if truth is not None:
        out["category"] = flag_metrics(flag, truth)
        out["auroc_mislabel_score"] = round(detection_metrics(s["mislabel_score"], truth)["auroc"], 4)
        out["auroc_1-p_given"] = round(detection_metrics(1 - s["p_given"], truth)["auroc"], 4)
        stat = percentile(mislabel_statistic(sig))
        for w in BLENDS:   # more weight on the (better fitted) model's own verdict
            blend = (1 - w) * stat + w * percentile(1.0 - s["p_given"])
            out[f"auroc_blend_{w:g}"] = round(detection_metrics(blend, truth)["auroc"], 4)
    return out


def load_finished_run(run: Path):
    """(config, Prepared with the run's labels and its ``model.pt`` loaded, truth or None, metadata, signals of the
    run's own trajectories): a finished run as it was at its prediction pass, for replays."""
    args = json.loads((run / "run-args.json").read_text())
    cfg = RunConfig.from_dict(saved_config(args["config"]))   # as the run trained: options it predates filled in
    truth_df = pd.read_csv(run / "truth.csv").set_index("path") if (run / "truth.csv").exists() else None
    relabel = None if truth_df is None else (lambda t: truth_df.loc[list(t.paths), "noisy_label"].to_numpy())
    prep = prepare(load_index(args["dataset"]), cfg, relabel=relabel)
    truth = None if truth_df is None else truth_df.loc[list(prep.table.paths), "flipped"].to_numpy().astype(bool)
    meta = read_metadata(run)
    sig = accumulate(read_epochs(run / "trajectories"), len(prep.labels), peak_epoch=None,
                     window_start=meta.stop.mislabel_window[0] - 1)
    prep.model.load_state_dict(load_state_dict_file(run / "model.pt"))
    return cfg, prep, truth, meta, sig


def replay(run: Path, epochs: int, lr_factor: float) -> dict:
    cfg, prep, truth, meta, sig = load_finished_run(run)
    labels = prep.labels
    res = {"run": str(run), "n": len(labels), "epochs_at_stop": meta.stop.epochs_trained,
           "true_fraction": None if truth is None else round(float(truth.mean()), 4)}
    bs = cfg.batch_size
    res["at stop"] = evaluate_probs(sig, predict_probs(prep.model, prep.source, batch_size=bs, dtype=prep.dtype),
                                    labels, truth, annealed=False)
    torch.manual_seed(cfg.seed + 1)
    t = time.perf_counter()
    for e in range(1, epochs + 1):
        fit(prep.train_model, prep.source, cfg.replace(lr=cfg.lr * lr_factor, max_epochs=1, stop="none",
                                                       warmup_epochs=0.0, seed=cfg.seed + 100 + e,
                                                       anneal_epochs=0),
            recorder=Recorder(len(labels)))
        probs = predict_probs(prep.model, prep.source, batch_size=bs, dtype=prep.dtype)
        res[f"+{e} epochs at lr x{lr_factor:g}"] = dict(evaluate_probs(sig, probs, labels, truth, True),
                                                        seconds=round(time.perf_counter() - t, 1))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr-factor", type=float, default=0.1)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    results = []
    for run in a.runs:
        r = replay(run, a.epochs, a.lr_factor)
        results.append(r)
        print(json.dumps(r, indent=1), flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
