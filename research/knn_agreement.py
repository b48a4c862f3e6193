"""Does the label agreement of a sample's nearest neighbours in the network's own feature space help find
mislabeled images (Bahri et al. 2020, "Deep k-NN for noisy labels"; Zhu et al. 2022)? Offline, on finished
eval-noise runs: the stop point's ``model.pt`` gives penultimate features (eval mode, no augmentation), k-NN
by cosine similarity gives the fraction of neighbours whose given label differs from the sample's, and the
AUROC of that score, of ``mislabel_score``, and of blends of the two (as percentiles) is printed.

    python research/knn_agreement.py bench-out/nearly-clean-instance/cifar10-train-500pc-instance-0.2/seed-0 \
        bench-out/nearly-clean/cifar10-train-500pc/symmetric-0.2/seed-0 --k 10

Supports issue 13, item 3 (a candidate, not shipped: see BENCHMARKS.md §10).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from memscan.config import RunConfig
from memscan.data import load_index
from memscan.evaluate import detection_metrics
from memscan.models import load_weights_only
from memscan.prepare import prepare
from memscan.report import read_frame, read_metadata
from memscan.run_folder import RunFolder
from memscan.scores import percentile


@torch.no_grad()
def features(prep, model) -> np.ndarray:
    """Penultimate features (the input of the classifier head) of every sample, L2-normalised."""
    out = []
    model.eval()
    for idx in torch.arange(len(prep.source)).split(512):
        x, _ = prep.source.batch(idx)
        out.append(model.pool(model.features(x)).flatten(1))
    f = torch.cat(out)
    return torch.nn.functional.normalize(f, dim=1).numpy()


def knn_disagreement(feats: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Fraction of the k nearest neighbours (cosine, self excluded) whose given label differs."""
    out = np.empty(len(labels))
    for s in range(0, len(labels), 2048):
        sim = feats[s:s + 2048] @ feats.T
        sim[np.arange(len(sim)), np.arange(s, s + len(sim))] = -np.inf
        nn_idx = np.argpartition(-sim, k, axis=1)[:, :k]
        out[s:s + len(sim)] = (labels[nn_idx] != labels[s:s + len(sim), None]).mean(1)
    return out


def evaluate(run: Path, k: int) -> dict:
    meta = read_metadata(run)
    df = read_frame(run)
    truth_df = pd.read_csv(RunFolder(run).truth).set_index("path")
    flipped = truth_df.loc[df["path"], "flipped"].to_numpy().astype(bool)
    args = RunFolder(run).load_args()
    prep = prepare(load_index(args["dataset"]), RunConfig.from_dict(meta.config),
                   relabel=lambda t: truth_df.loc[t.paths, "noisy_label"].to_numpy())
    prep.model.load_state_dict(load_weights_only(RunFolder(run).model)["state_dict"])
    disagree = knn_disagreement(features(prep, prep.model), prep.labels, k)
    mis = df["mislabel_score"].to_numpy()
    res = {"run": str(run), "k": k, "mislabel_score": detection_metrics(mis, flipped)["auroc"],
           "knn_disagreement": detection_metrics(disagree, flipped)["auroc"]}
    for w in (0.2, 0.35, 0.5):
        blend = (1 - w) * percentile(mis) + w * percentile(disagree)
        res[f"blend_{w}"] = detection_metrics(blend, flipped)["auroc"]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--k", type=int, default=10)
    a = ap.parse_args()
    for run in a.runs:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in evaluate(run, a.k).items()}))


if __name__ == "__main__":
    main()
