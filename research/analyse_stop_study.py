"""Analyse a stop-signal study folder (see stop_signal_study.py): per epoch, the AUROC each
score would reach if training stopped there, and where each candidate stop rule stops.

    python research/analyse_stop_study.py bench-out/cifar-sym20 [--json out.json]
"""
import argparse
import json
from pathlib import Path

import numpy as np

from memscan.evaluate import detection_metrics
from memscan.scores import accumulate, mislabel_statistic, percentile
from memscan.stopping import PeakDetector, RankStabilityDetector
from memscan.trajectories import read_epochs


def auroc(s, truth):
    return detection_metrics(s, truth)["auroc"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    ex = np.load(a.folder / "exact.npz")
    curves = json.loads((a.folder / "curves.json").read_text())["curves"]
    flipped, labels = ex["flipped"], ex["labels"]
    n, E = len(labels), len(curves)
    recs = list(read_epochs(a.folder / "traj"))
    rows = []
    for t in range(E):
        sig = accumulate(recs[:t + 1], n, peak_epoch=None)
        pg = ex["p_given"][t]
        csg_exact = ex["grad_sq"][:t + 1].sum(0)
        r = {"epoch": t + 1, "val_loss": curves[t].get("val_loss"), "val_acc": curves[t].get("val_acc"),
             "train_acc": curves[t]["train_acc"], "weight_norm": curves[t]["weight_norm"],
             "total_norm": curves[t]["total_norm"], "grad_mean": curves[t]["grad_mean"],
             "auc_csg": auroc(sig.csg, flipped), "auc_csg_exact": auroc(csg_exact, flipped),
             "auc_sgal": auroc(sig.csl, flipped), "auc_aum": auroc(-sig.aum, flipped),
             "auc_1mp": auroc(1 - pg, flipped), "auc_forget": auroc(sig.forgetting, flipped),
             "auc_ltime": auroc(sig.learning_time, flipped),
             "auc_combo": auroc(mislabel_statistic(sig), flipped),
             "auc_combo+csg": auroc(percentile(1 - pg) + percentile(sig.csl) + percentile(-sig.aum)
                                    + percentile(sig.csg), flipped),
             "auc_1mp+csl": auroc(percentile(1 - pg) + percentile(sig.csl), flipped),
             "auc_1mp+aum": auroc(percentile(1 - pg) + percentile(-sig.aum), flipped)}
        rows.append(r)
    # stop rules replayed on the recorded curves
    stops = {}
    for key in ("weight_norm", "total_norm", "grad_mean"):
        for sm, pat in ((3, 3), (3, 2), (5, 3)):
            d = PeakDetector(smoothing=sm, patience=pat)
            stop = None
            for t, c in enumerate(curves):
                if d.update(c[key]) and stop is None:
                    stop = t
            stops[f"{key} (smooth {sm}, patience {pat})"] = {
                "peak_epoch": None if d.peak_epoch is None else d.peak_epoch + 1,
                "stop_epoch": None if stop is None else stop + 1}
    for thr in (0.98, 0.985, 0.99):
        d, cum, stop = RankStabilityDetector(threshold=thr, patience=2), np.zeros(n), None
        for t, rec in enumerate(recs):
            cum += np.nan_to_num(rec.margin)
            if d.update(cum / (t + 1)) and stop is None:
                stop = t
        stops[f"suspect-set stability >= {thr}"] = {"stop_epoch": None if stop is None else stop + 1,
                                                   "overlap": [round(v, 4) for v in d.values]}
    vl = [c.get("val_loss") for c in curves]
    first_min = next((t + 1 for t in range(1, E - 1) if vl[t] is not None and vl[t] <= vl[t - 1]
                      and vl[t] <= vl[t + 1]), None)
    stops["validation loss, first local minimum"] = {"stop_epoch": first_min}
    stops["validation loss, global minimum"] = {"stop_epoch": int(np.nanargmin(np.array(vl, float))) + 1}
    cols = list(rows[0])
    print(" ".join(f"{c[:11]:>11}" for c in cols))
    for r in rows:
        print(" ".join(f"{(r[c] if r[c] is not None else float('nan')):>11.4f}" if isinstance(r[c], float)
                       else f"{str(r[c]):>11}" for c in cols))
    for k, v in stops.items():
        print(f"{k:45s} {v}")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "stops": stops}, indent=1))


if __name__ == "__main__":
    main()
