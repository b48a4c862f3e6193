"""Replay the stop rule on a finished full run (``--stop none``): where would each rank threshold
stop, what AUROC would the report have there, and how long would the run have taken?

Training before the stop does not depend on the stop rule, so stopping a default run at epoch e gives
exactly the first e epochs of the full run with the same seed: the replay is exact, not a simulation.

    python research/replay_stop.py bench-out/base-cifar-sym10 --rate 0.1 [--kind symmetric] \
        [--thresholds 0.9,0.95,0.96,0.97,0.98,0.985]

Expects the folder layout of ``benchmarks/baselines.py`` (data/subset.parquet, full/, memscan/ and the
baseline JSON next to the folder for cleanlab's time and AUROC).
"""
import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from memscan.config import RunConfig
from memscan.data import inject_noise, load_index
from memscan.evaluate import detection_metrics
from memscan.report import read_metadata
from memscan.scores import accumulate, mislabel_statistic, percentile
from memscan.stopping import StopRule
from memscan.trajectories import read_epochs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--kind", default="symmetric")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--thresholds", default="0.9,0.93,0.95,0.96,0.97,0.98,0.985")
    ap.add_argument("--reference", type=Path, help="--kind instance: the reference.parquet eval-noise wrote for the "
                    "same images (its probabilities decide which images flipped)")
    a = ap.parse_args()
    table = load_index(a.folder / "data" / "subset.parquet")
    probs = None
    if a.reference is not None:
        import numpy as np
        ref = pq.read_table(a.reference).to_pydict()
        by_path = dict(zip(ref["path"], ref["probs"]))
        probs = np.array([by_path[p] for p in table.paths], dtype=np.float64)
    truth = inject_noise(table.labels, table.num_classes, rate=a.rate, kind=a.kind, seed=a.seed, probs=probs).flipped
    full = a.folder / "full"
    recs = list(read_epochs(full / "trajectories"))
    curves = pq.read_table(full / "epochs.parquet").to_pylist()
    n = len(truth)
    per_epoch = []
    for e in range(1, len(recs) + 1):
        sig = accumulate(recs[:e], n, peak_epoch=None)
        per_epoch.append(round(detection_metrics(percentile(mislabel_statistic(sig)), truth)["auroc"], 4))
    # time outside the epochs (decode from cache, prediction pass, scoring, writing), from the default run
    meta = read_metadata(a.folder / "memscan")
    t = meta.timings
    fixed = t["total_s"] - t["train_s"]
    epoch_s = t["train_s"] / meta.stop.epochs_trained   # an epoch of the default run, writes included
    base = json.loads(a.folder.with_suffix(".json").read_text()) if a.folder.with_suffix(".json").exists() else {}
    cl = next((m for k, m in base.get("methods", {}).items() if k.startswith("cleanlab")), None)
    rows = []
    for thr in [float(x) for x in a.thresholds.split(",")]:
        cfg = RunConfig(**{k: v for k, v in meta.config.items() if k in RunConfig.__dataclass_fields__}
                        ).replace(rank_threshold=thr, max_epochs=len(recs))
        rule = StopRule(cfg)
        stop = len(recs)
        for rec, c in zip(recs, curves):
            if rule.update(rec, dict(c)):
                stop = rec.epoch + 1
                break
        secs = stop * epoch_s + fixed
        row = {"rank_threshold": thr, "stop_epoch": stop, "auroc": per_epoch[stop - 1], "est_seconds": round(secs)}
        if cl:
            row["cleanlab_time_ratio"] = round(cl["seconds"] / secs, 1)
            row["vs_cleanlab_auroc"] = round(per_epoch[stop - 1] - cl["label_quality"]["auroc"], 4)
        rows.append(row)
    out = {"folder": str(a.folder), "rate": a.rate, "kind": a.kind, "epoch_seconds": round(epoch_s, 1),
           "fixed_seconds": round(fixed, 1), "auroc_by_epoch": per_epoch, "thresholds": rows,
           "cleanlab": None if cl is None else {"seconds": round(cl["seconds"]),
                                                "auroc": cl["label_quality"]["auroc"]}}
    if cl:   # the first epoch at which memscan's report matches cleanlab's AUROC
        e = next((i + 1 for i, v in enumerate(per_epoch) if v >= cl["label_quality"]["auroc"]), None)
        out["first_epoch_matching_cleanlab"] = e
        if e:
            out["time_ratio_at_match"] = round(cl["seconds"] / (e * epoch_s + fixed), 1)
    # the shipped scores recomputed exactly on the runs of the baseline JSON (which may predate them):
    # same trajectories, same stop epoch; category = confident learning AND negative late-window margin
    from memscan.evaluate import flag_metrics
    from memscan.report import read_report
    out["rescored"] = {}
    for name in ("memscan", "full"):
        df = read_report(a.folder / name).to_pandas()
        e = len(list((a.folder / name / "trajectories").glob("epoch-*.parquet")))
        sig = accumulate(read_epochs(a.folder / name / "trajectories"), n, peak_epoch=None, window_start=e // 2)
        m = detection_metrics(percentile(mislabel_statistic(sig)), truth)
        flag = (df["category"].to_numpy() == "mislabeled") & (sig.late_aum < 0)
        out["rescored"][name] = {"epochs": e, "mislabel_score": {k: round(v, 4) if isinstance(v, float) else v
                                                                  for k, v in m.items()},
                                 "category": {k: round(v, 4) for k, v in flag_metrics(flag, truth).items()}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
