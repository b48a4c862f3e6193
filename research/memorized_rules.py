"""Which rule should decide the ``memorized`` category? Replays candidate rules on finished runs against a
``memscan memorization`` reference of the same images, without retraining (issue 14).

For each RUN:REFERENCE pair and each rule: how many images it flags, the precision against reference
memorization above 0.5 and above 0.3, and the precision the same number of flags reaches when taken from half
the reference's models and scored against the other half (``memorization.split_half_precision``: the
reference's own noise floor). Rules are chosen on one reference and checked on the others.

    python research/memorized_rules.py RUN:REFERENCE ... [--json research/results/memorized-rules-....json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from anneal_fit import load_finished_run  # noqa: E402  (sibling research scripts)
from knn_tta import features_and_probs, knn  # noqa: E402

from memscan.memorization import spearman, split_half_precision  # noqa: E402
from memscan.memorization_run import _model_outputs, read_memorization
from memscan.report import read_frame, read_metadata
from memscan.scores import MEMORIZED_MIN_LOSS
from memscan.trajectories import read_epochs


def fence(x, k):
    q1, q3 = np.percentile(x, [25, 75])
    return q3 + k * (q3 - q1)


def per_epoch_p(run: Path, n: int):
    """[E, N] training-step probability of the given label (exp(-loss)) per epoch, annealing epochs excluded."""
    meta = read_metadata(run)
    last = meta.stop.epochs_trained
    return np.stack([np.exp(-rec.loss.astype(np.float64)) for rec in read_epochs(run / "trajectories")
                     if rec.epoch < last])


def rules(df, p_ep, peak_epochs: int, share: dict) -> dict:
    sgal, fitted = df["sgal"].to_numpy(), (df["pred"] == df["label"]).to_numpy()
    free = (df["category"] != "mislabeled").to_numpy()
    lossy = sgal > MEMORIZED_MIN_LOSS * max(peak_epochs, 1)
    pg = df["p_given"].to_numpy()
    out = {"shipped": (df["category"] == "memorized").to_numpy()}
    for k in (2.0, 3.0):
        out[f"SGAL fence k={k:g}"] = (sgal > fence(sgal, k)) & lossy & fitted & free
    base = out["shipped"]
    for t in (0.5, 0.7, 0.9):
        out[f"shipped, p_given >= {t}"] = base & (pg >= t)
    # a one-run in-minus-out: the stop point's p(given) less the geometric mean over the run's epochs
    p_out = np.exp(np.log(np.maximum(p_ep, 1e-12)).mean(0))
    d = pg - p_out
    for t in (0.4, 0.5, 0.6):
        out[f"p_given - exp(-mean loss) > {t}, fitted"] = (d > t) & fitted & free
    # the same with the arithmetic mean of the per-epoch probability
    d2 = pg - p_ep.mean(0)
    for t in (0.4, 0.5, 0.6):
        out[f"p_given - mean p > {t}, fitted"] = (d2 > t) & fitted & free
    # fitted only at the very end: wrong in every epoch but the last two, right at the stop
    late = p_ep.shape[0] >= 4
    if late:
        never_early = (p_ep[:-2] < 0.5).all(0)
        out["wrong (p<0.5) in all but the last 2 epochs, fitted"] = never_early & fitted & free & (pg >= 0.5)
        out["... and shipped"] = never_early & base
    # neighbours' labels in the stop model's feature space stand in for the held-out prediction: an image the
    # model fits while its neighbours carry other labels is one a model that never saw it would get wrong
    for k, sh in share.items():
        for t in (0.1, 0.2, 0.3):
            out[f"fitted, k={k} neighbours' share of the label <= {t}"] = fitted & free & (sh <= t)
        out[f"shipped, k={k} share <= 0.3"] = base & (sh <= 0.3)
        out[f"shipped, k={k} share <= 0.5"] = base & (sh <= 0.5)
        for t in (0.5, 0.6, 0.7):
            out[f"p_given - k={k} share > {t}, fitted"] = fitted & free & (pg - sh > t)
    return out


def evaluate(run: Path, ref_dir: Path) -> dict:
    ref, meta = read_memorization(ref_dir)
    df = read_frame(run, ["path", "label", "pred", "p_given", "sgal", "category", "memorization_score"])
    rmeta = read_metadata(run)
    mem = ref.set_index("path").loc[df["path"], "memorization"].to_numpy()
    halves = _model_outputs(ref_dir, ref["path"], meta.get("models"))
    if halves is not None:   # in the run's order
        pos = ref.reset_index().set_index("path").loc[df["path"], "index"].to_numpy()
        halves = (halves[0][:, pos], halves[1][:, pos])
    peak = rmeta.stop.peak_epoch or rmeta.stop.csg_epochs
    res = {"run": str(run), "reference": str(ref_dir), "n": len(df), "epochs": rmeta.stop.epochs_trained,
           "above_0.5": float((mem > 0.5).mean()), "above_0.3": float((mem > 0.3).mean()), "rules": {}}
    _, prep, _, _, _ = load_finished_run(run)
    assert list(prep.table.paths) == list(df["path"])
    feats, _ = features_and_probs(prep.model, prep.source, flip=False)
    # the share of the label among the neighbours, on a grid of 1/k (1 - a float fraction missed "<= 0.3" at k=10)
    share = {k: np.round((1.0 - knn(feats, prep.labels, k)[0]) * k) / k for k in (10, 25)}
    ms = df["memorization_score"].to_numpy()
    res["spearman"] = {"memorization_score": spearman(ms, mem)}
    for k, sh in share.items():
        res["spearman"][f"1 - k={k} share"] = spearman(1 - sh, mem)
        res["spearman"][f"p_given - k={k} share"] = spearman(df["p_given"].to_numpy() - sh, mem)
        for w in (0.25, 0.5):
            from memscan.scores import percentile
            res["spearman"][f"memorization_score + {w} x (1 - k={k} share)"] = spearman(
                (1 - w) * ms + w * percentile(1 - sh), mem)
    for name, flag in rules(df, per_epoch_p(run, len(df)), peak, share).items():
        flag = np.asarray(flag, bool)
        k = int(flag.sum())
        r = {"flagged": k}
        for level in (0.5, 0.3):
            r[f"precision_{level}"] = round(float((mem[flag] > level).mean()), 3) if k else None
            if halves is not None and k:
                r[f"split_half_{level}"] = round(split_half_precision(*halves, k, level), 3)
        res["rules"][name] = r
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pairs", nargs="+", help="RUN:REFERENCE")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    results = [evaluate(*map(Path, p.split(":"))) for p in a.pairs]
    for r in results:
        print(f"\n{r['run']} vs {r['reference']}  n={r['n']} epochs={r['epochs']} "
              f"mem>0.5: {r['above_0.5']:.3f}  >0.3: {r['above_0.3']:.3f}")
        for name, v in r["spearman"].items():
            print(f"  Spearman {name:43s} {v:.4f}")
        for name, v in r["rules"].items():
            print(f"  {name:52s} " + "  ".join(f"{k}={x}" for k, x in v.items()))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
