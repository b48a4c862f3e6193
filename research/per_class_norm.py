"""Per-class normalisation of ``mislabel_score`` (issue 13, item 3): instance-dependent noise concentrates
on confusable class pairs, so a score ranked within each given class might separate better. Replayed on
finished eval-noise runs (report + truth.csv), no retraining; prints the AUROC of the shipped (global)
score, the within-class percentile and their blend.

    python research/per_class_norm.py bench-out/nearly-clean/cifar10-test/symmetric-0.02/seed-0 ...
"""
import sys, numpy as np, pandas as pd
from pathlib import Path
from memscan.report import read_frame
from memscan.evaluate import detection_metrics
from memscan.scores import percentile
for run in map(Path, sys.argv[1:]):
    df = read_frame(run, ["path","label","mislabel_score","p_given","confident_class"])
    truth = pd.read_csv(run/"truth.csv").set_index("path").loc[df.path,"flipped"].to_numpy().astype(bool)
    s = df.mislabel_score.to_numpy(); lab = df.label.to_numpy()
    pc = np.empty_like(s)
    for c in np.unique(lab):
        m = lab==c; pc[m] = percentile(s[m])
    # blend
    out = {"global": detection_metrics(s,truth)["auroc"], "per-class": detection_metrics(pc,truth)["auroc"],
           "blend .5": detection_metrics(percentile(s)+percentile(pc),truth)["auroc"]}
    print(run, {k: round(v,4) for k,v in out.items()})
