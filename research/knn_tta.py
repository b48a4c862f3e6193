"""After annealing, do neighbours' labels in the network's feature space, or flip test-time augmentation of
the prediction pass, rank label errors better, and can they make the ``mislabeled`` category precise on
nearly clean data? (issue 13, item 3). Offline on finished runs whose ``model.pt`` is the annealed model:

    python research/knn_tta.py bench-out/anneal-verify/c500-inst20/seed-0 ... --json research/results/knn-tta.json

For each run: penultimate features and softmax of the plain and the horizontally flipped images (flip only
where the run's augmentation flips), k-NN disagreement (cosine, self excluded; plain and similarity-weighted)
at several k, and the AUROC of ``mislabel_score`` with each candidate blended in, plus the category's
flagged fraction / precision / recall when it also requires the neighbours to disagree.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import sys

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from anneal_fit import load_finished_run  # noqa: E402  (the sibling research script)

from memscan.evaluate import detection_metrics, flag_metrics  # noqa: E402
from memscan.report import read_frame  # noqa: E402
from memscan.scores import compute_scores, mislabel_statistic, percentile  # noqa: E402

KS = (10, 25, 50)


@torch.no_grad()
def features_and_probs(model, source, flip: bool):
    feats, probs = [], []
    captured = {}
    hook = model.head.register_forward_pre_hook(lambda m, a: captured.__setitem__("f", a[0]))
    model.eval()
    try:
        for idx in torch.arange(len(source)).split(512):
            x, _ = source.batch(idx)
            if flip:
                x = x.flip(-1)
            p = model(x).float().softmax(1)
            feats.append(captured["f"].float())
            probs.append(p)
    finally:
        hook.remove()
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def knn(feats: np.ndarray, labels: np.ndarray, k: int):
    """(fraction of the k nearest neighbours with another given label, similarity-weighted version,
    neighbours' vote share for the sample's given label), cosine, self excluded."""
    f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    n = len(labels)
    hard, soft = np.empty(n), np.empty(n)
    for s in range(0, n, 2048):
        sim = f[s:s + 2048] @ f.T
        rows = np.arange(len(sim))
        sim[rows, np.arange(s, s + len(sim))] = -np.inf
        idx = np.argpartition(-sim, k, axis=1)[:, :k]
        w = np.maximum(np.take_along_axis(sim, idx, 1), 0)
        other = labels[idx] != labels[s:s + len(sim), None]
        hard[s:s + len(sim)] = other.mean(1)
        soft[s:s + len(sim)] = (w * other).sum(1) / np.maximum(w.sum(1), 1e-12)
    return hard, soft


def auroc(score, truth):
    return round(detection_metrics(score, truth)["auroc"], 4)


def evaluate(run: Path) -> dict:
    cfg, prep, truth, _, sig = load_finished_run(run)
    labels = prep.labels
    feats, probs = features_and_probs(prep.model, prep.source, flip=False)
    flips = cfg.flips
    res = {"run": str(run), "n": len(labels), "flip_tta": flips,
           "true_fraction": None if truth is None else round(float(truth.mean()), 4)}
    shipped = compute_scores(sig, probs, labels, annealed=True)
    report = read_frame(run)
    res["matches_report"] = bool(np.allclose(shipped["mislabel_score"], report["mislabel_score"].to_numpy()))
    stat = percentile(mislabel_statistic(sig))
    cat = shipped["category"] == "mislabeled"
    variants = {"plain": (feats, probs)}
    if flips:
        f2, p2 = features_and_probs(prep.model, prep.source, flip=True)
        variants["flip-tta"] = ((feats + f2) / 2, (probs + p2) / 2)
    for name, (f, p) in variants.items():
        p_given = p[np.arange(len(labels)), labels]
        mis = percentile(0.5 * stat + 0.5 * percentile(1 - p_given))
        out = {"accuracy": round(float((p.argmax(1) == labels).mean()), 4)}
        if truth is not None:
            out["mislabel_score"] = auroc(mis, truth)
            out["1-p_given"] = auroc(1 - p_given, truth)
        for k in KS:
            hard, soft = knn(f, labels, k)
            row = {"flag_knn_half": round(float((cat & (hard >= 0.5)).mean()), 4)}
            if truth is not None:
                row.update(hard=auroc(hard, truth), soft=auroc(soft, truth),
                           category=flag_metrics(cat, truth),
                           category_and_knn_half=flag_metrics(cat & (hard >= 0.5), truth))
                for w in (0.2, 0.33, 0.5):
                    row[f"blend_soft_{w:g}"] = auroc((1 - w) * mis + w * percentile(soft), truth)
                row["thirds"] = auroc(stat + percentile(1 - p_given) + percentile(soft), truth)
            out[f"k{k}"] = row
        res[name] = out
        print(json.dumps({"run": str(run), name: out}), flush=True)
    res["flagged_shipped"] = round(float(cat.mean()), 4)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    results = [evaluate(r) for r in a.runs]
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
