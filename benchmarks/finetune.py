"""From scratch against fine-tuning a prior model, side by side on the same noisy data (issue 15).

The prior is a memscan run on images disjoint from the audited ones (its ``model.pt``, loaded as a user
loads weights: ``--weights``). Each recipe runs ``memscan.pipeline.run`` on the same images with the same
injected noise and seed; the JSON holds detection (AUROC, AP, precision@k, TPR@5%FPR of ``mislabel_score``),
the ``mislabeled`` category's precision / recall / estimated rate, epochs, accuracy at the stop and time.

    python benchmarks/finetune.py bench-out/ft/audit-1000pc.parquet --prior bench-out/ft/prior-40k/model.pt \
        --rate 0.2 --recipes scratch,prior,prior-body1,prior-freeze --out bench-out/ft/sym20.json

``--rate 0`` audits the data as given (no truth: flagged fraction and accuracy only).
"""
import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from memscan.config import RunConfig
from memscan.crossfit import reference_probabilities
from memscan.data import inject_noise
from memscan.evaluate import detection_metrics, flag_metrics
from memscan.pipeline import run
from memscan.report import read_report

# recipe name -> RunConfig changes; "{prior}" is replaced by --prior
RECIPES = {
    "scratch": {},
    "prior": {"weights": "{prior}"},                                  # the automatic fine-tuning recipe
    "prior-body1": {"weights": "{prior}", "body_lr": 1.0},            # the whole network at the scratch rate
    "prior-lr0.1": {"weights": "{prior}", "body_lr": 1.0, "lr": 0.00125},   # everything at a tenth
    "prior-head0": {"weights": "{prior}", "head_epochs": 0.0},        # no head-only phase
    "prior-head2": {"weights": "{prior}", "head_epochs": 2.0},
    "prior-body0.3": {"weights": "{prior}", "body_lr": 0.3},
    "prior-body0.03": {"weights": "{prior}", "body_lr": 0.03},
    "prior-freeze": {"weights": "{prior}", "freeze": True},
    "prior-newhead": {"weights": "{prior}", "new_head": True},                  # head-only epoch, then all
    "prior-newhead-head0": {"weights": "{prior}", "new_head": True, "head_epochs": 0.0},
    "prior-newhead-freeze": {"weights": "{prior}", "new_head": True, "freeze": True},
    "prior-freeze-lr10": {"weights": "{prior}", "freeze": True, "lr": 0.125},
    # the input gradient in one epoch of every K (CSG estimated from those), the body forward only otherwise
    "prior-freeze-every1": {"weights": "{prior}", "freeze": True, "input_grad_every": 1},
    "prior-freeze-every2": {"weights": "{prior}", "freeze": True, "input_grad_every": 2},
    "prior-freeze-every3": {"weights": "{prior}", "freeze": True, "input_grad_every": 3},
    "prior-freeze-every4": {"weights": "{prior}", "freeze": True, "input_grad_every": 4, "min_epochs": 4},
    # another batch order and augmentation draw, every gradient (the noise is --seed's): how far two exact
    # runs differ, the floor for the comparisons above
    "prior-freeze-order1": {"weights": "{prior}", "freeze": True, "seed": 1},
}


def rounded(d):
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--prior", required=True)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--kind", default="symmetric")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipes", default="scratch,prior")
    ap.add_argument("--model", default="memscan-cnn")
    ap.add_argument("--image-size", type=int, help="pixels (default: the images' native size)")
    ap.add_argument("--max-epochs", type=int, help="train every recipe exactly this many epochs (--stop none): "
                    "equal work for a side-by-side timing")
    ap.add_argument("--work", type=Path, help="run folders (default: next to --out)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    work = a.work or a.out.with_suffix("")
    base = RunConfig(model=a.model, seed=a.seed, image_size=a.image_size)
    if a.max_epochs:
        base = base.replace(stop="none", max_epochs=a.max_epochs)
    holder = {}

    def relabel(table):
        if a.rate == 0:
            return table.labels
        if "noise" not in holder:
            probs = None
            if a.kind == "instance":
                by_path = dict(zip(*reference_probabilities(table, base, progress=None)))
                probs = np.stack([by_path[q] for q in table.paths])
            holder["noise"] = inject_noise(table.labels, table.num_classes, rate=a.rate, kind=a.kind,
                                           seed=a.seed, probs=probs)
        return holder["noise"].labels

    res = {"dataset": str(a.dataset), "prior": a.prior, "model": a.model, "image_size": a.image_size,
           "rate": a.rate, "kind": a.kind, "seed": a.seed,
           "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                      f"torch {torch.__version__}", "date": str(date.today()), "recipes": {}}
    for name in a.recipes.split(","):
        changes = {k: (v.format(prior=a.prior) if isinstance(v, str) else v) for k, v in RECIPES[name].items()}
        t = time.perf_counter()
        r = run(a.dataset, base.replace(**changes), out=work / name, overwrite=True, relabel=relabel)
        wall = time.perf_counter() - t
        df = read_report(r.report_path).to_pandas()
        flagged = df["category"].to_numpy() == "mislabeled"
        row = {"seconds": round(wall, 1), "epochs": r.summary["epochs_trained"],
               "stop_accuracy": round(float((df["pred"] == df["label"]).mean()), 4),
               "flagged": round(float(flagged.mean()), 4), "changes": changes,
               "timings": {k: round(v, 1) for k, v in (r.summary.get("timings") or {}).items()}}
        if a.rate > 0:
            truth = holder["noise"].flipped
            row["mislabel_score"] = rounded(detection_metrics(df["mislabel_score"].to_numpy(), truth))
            row["1-p_given"] = round(detection_metrics(1 - df["p_given"].to_numpy(), truth)["auroc"], 4)
            row["category"] = rounded(flag_metrics(flagged, truth))
        res["recipes"][name] = row
        print(json.dumps({name: row}), flush=True)
    ref = res["recipes"].get("scratch", {}).get("seconds")
    for row in res["recipes"].values():
        if ref:
            row["time_vs_scratch"] = round(row["seconds"] / ref, 2)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
