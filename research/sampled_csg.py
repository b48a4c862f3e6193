"""How close is CSG estimated from a K-th of the epochs (``--freeze --input-grad-every K``) to the exact one?

Compares the report columns of run folders trained alike but for ``--input-grad-every``: Spearman and
Pearson of log CSG, the overlap of the top 1% and 5% by CSG, the atypicality score (half CSG), and the mislabel
and memorization scores, which read no input gradient. With K > 1 the samples taken in an epoch fill whole
batches, so the batches differ from the exact run's: compare against a second exact run with another batch
order (the ``prior-freeze-order1`` recipe) for the floor. With ``--reference``, the Spearman of each run's CSG
against a Feldman-Zhang reference (``memscan memorization``).

    python research/sampled_csg.py bench-out/ft-r18/sampled/prior-freeze-every1 \
        bench-out/ft-r18/sampled-g/prior-freeze-order1 bench-out/ft-r18/sampled-g/prior-freeze-every{2,3} \
        --json research/results/sampled-csg-resnet18-32px-machineA.json

(run folders of ``benchmarks/finetune.py --model resnet18 --recipes prior-freeze-every1,...``, BENCHMARKS.md
§18). ``--recompute`` replays CSG from the stored trajectories with this checkout's estimator.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.stats import pearsonr, spearmanr


def columns(run: Path, recompute: bool) -> dict:
    t = pq.read_table(run / "report.parquet", columns=["sample_id", "csg", "atypicality_score", "mislabel_score",
                                                      "memorization_score", "category"]).to_pandas()
    t = t.sort_values("sample_id").reset_index(drop=True)
    if recompute:   # CSG again from the stored trajectories with this checkout's estimator (scores.accumulate)
        from memscan.scores import accumulate
        from memscan.trajectories import read_epochs
        csg_epochs = json.loads((run / "run.json").read_text())["stop"]["csg_epochs"]
        sig = accumulate(read_epochs(run / "trajectories"), int(t["sample_id"].max()) + 1, peak_epoch=csg_epochs - 1)
        t["csg"] = sig.csg[t["sample_id"].to_numpy()]
        t["atypicality_score"] = np.nan   # depends on the prediction too: not recomputed
    return t


def top_overlap(a, b, frac):
    k = max(1, int(round(frac * len(a))))
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("exact", type=Path, help="run folder with every input gradient (K = 1)")
    ap.add_argument("sampled", type=Path, nargs="+", help="run folders with --input-grad-every K")
    ap.add_argument("--reference", type=Path, help="memscan memorization output (Parquet)")
    ap.add_argument("--recompute", action="store_true", help="CSG from the trajectories with the current estimator")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    ex = columns(a.exact, a.recompute)
    ref = None
    if a.reference:
        r = pq.read_table(a.reference).to_pandas().set_index("sample_id")
        ref = r.loc[ex["sample_id"], "mem"].to_numpy()
    out = {"exact": str(a.exact), "runs": {}}
    if ref is not None:
        out["exact_csg_vs_reference_spearman"] = round(float(spearmanr(ex["csg"], ref)[0]), 4)
    for run in a.sampled:
        s = columns(run, a.recompute)
        assert (s["sample_id"].to_numpy() == ex["sample_id"].to_numpy()).all()
        row = {
            "input_grad_every": json.loads((run / "run.json").read_text())["config"].get("input_grad_every"),
            "csg_spearman": round(float(spearmanr(s["csg"], ex["csg"])[0]), 4),
            "log_csg_pearson": round(float(pearsonr(np.log(s["csg"] + 1e-30), np.log(ex["csg"] + 1e-30))[0]), 4),
            "csg_median_ratio": round(float(np.median(s["csg"] / ex["csg"])), 4),
            "top1pct_overlap": round(top_overlap(s["csg"].to_numpy(), ex["csg"].to_numpy(), 0.01), 4),
            "top5pct_overlap": round(top_overlap(s["csg"].to_numpy(), ex["csg"].to_numpy(), 0.05), 4),
            "atypicality_spearman": round(float(spearmanr(s["atypicality_score"], ex["atypicality_score"])[0]), 4),
            "mislabel_score_max_abs_diff": round(float(np.abs(s["mislabel_score"] - ex["mislabel_score"]).max()), 6),
            "memorization_score_max_abs_diff": round(float(np.abs(s["memorization_score"]
                                                                  - ex["memorization_score"]).max()), 6),
            "category_agreement": round(float((s["category"] == ex["category"]).mean()), 4),
        }
        if ref is not None:
            row["csg_vs_reference_spearman"] = round(float(spearmanr(s["csg"], ref)[0]), 4)
        out["runs"][str(run)] = row
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
