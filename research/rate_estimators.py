"""Can a run estimate its own noise rate within ±25%? (issue 13, point 4) Estimators replayed on finished runs.

For each run with known truth, the estimated noise fraction divided by the true one, for:

- ``flag``: the shipped `mislabeled` category's share (confident learning + late-window conditions);
- ``cl_alt``: confident learning's alternative class alone (exists and differs from the given label);
- ``cl_joint``: confident learning's calibrated joint (rows of the confident joint rescaled to the class
  counts; off-diagonal mass), cleanlab's ``estimate_joint``;
- ``pred``: the stop point's prediction differs from the given label;
- ``neg_aum``: negative area under the margin over the whole run;
- ``gmm_aum``, ``gmm_logit``, ``gmm_loss``: the weight of the upper component of a two-component Gaussian
  mixture on −AUM, on logit(1 − p(given)) and on the mean training loss (Arazo et al. 2019 use a mixture of
  losses to tell clean from noisy).

Each argument is ``RUN`` (an ``eval-noise`` seed folder with ``truth.csv``) or ``RUN:CLEAN`` (a run on noisy
labels and the clean manifest it was made from: truth = the label names differ, matched by path).

    python research/rate_estimators.py bench-out/anneal-verify/c500-sym20/seed-0 \\
        bench-out/inst1000/cifar-inst20-1000pc/memscan:bench-out/inst1000/cifar-inst20-1000pc/data/subset.parquet \\
        --json research/results/rate-estimators-machineA.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

ESTIMATORS = ("flag", "cl_alt", "cl_joint", "pred", "neg_aum", "gmm_aum", "gmm_logit", "gmm_loss")


def load(spec: str):
    run, _, clean = spec.partition(":")
    run = Path(run)
    df = pq.read_table(run / "report.parquet").to_pandas()
    if clean:
        s = pq.read_table(clean, columns=["path", "label_name"]).to_pandas().set_index("path")
        flipped = s.loc[df["path"], "label_name"].to_numpy() != df["label_name"].to_numpy()
    else:
        t = pd.read_csv(run / "truth.csv").set_index("path")
        flipped = t.loc[df["path"], "flipped"].to_numpy().astype(bool)
    meta = json.loads(pq.read_schema(run / "report.parquet").metadata[b"memscan"])
    epochs = len(list((run / "trajectories").glob("epoch-*.parquet")))
    return df, flipped, meta, epochs


def calibrated_joint(labels, confident, k) -> float:
    c = np.zeros((k, k))
    ok = confident >= 0
    np.add.at(c, (labels[ok], confident[ok]), 1)
    rows = c.sum(1, keepdims=True)
    cal = np.where(rows > 0, c / np.maximum(rows, 1) * np.bincount(labels, minlength=k)[:, None], 0)
    return float((cal.sum() - np.trace(cal)) / len(labels))


def upper_weight(x) -> float:
    from sklearn.mixture import GaussianMixture
    g = GaussianMixture(2, random_state=0, n_init=2).fit(np.asarray(x, np.float64)[:, None])
    return float(g.weights_[int(np.argmax(g.means_.ravel()))])


def estimates(df, epochs) -> dict:
    lab = df["label"].to_numpy()
    alt = df["confident_class"].to_numpy()
    p = np.clip(df["p_given"].to_numpy().astype(np.float64), 1e-6, 1 - 1e-6)
    return {"flag": float((df["category"] == "mislabeled").mean()),
            "cl_alt": float(((alt >= 0) & (alt != lab)).mean()),
            "cl_joint": calibrated_joint(lab, alt, int(lab.max()) + 1),
            "pred": float((df["pred"] != lab).mean()),
            "neg_aum": float((df["aum"] < 0).mean()),
            "gmm_aum": upper_weight(-df["aum"].to_numpy()),
            "gmm_logit": upper_weight(np.log(1 - p) - np.log(p)),
            "gmm_loss": upper_weight(df["csl"].to_numpy() / max(epochs, 1))}


def parse_runs(doc: str):
    """``runs`` (RUN or RUN:CLEAN_MANIFEST) and ``--json``: the arguments of the replays over finished runs."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="RUN (with truth.csv) or RUN:CLEAN_MANIFEST")
    ap.add_argument("--json", type=Path)
    return ap.parse_args()


def main():
    a = parse_runs(__doc__)
    rows = []
    for spec in a.runs:
        df, flipped, meta, epochs = load(spec)
        true = float(flipped.mean())
        est = estimates(df, epochs)
        rows.append({"run": spec.partition(":")[0], "samples": len(df), "stop_accuracy": meta.get("stop_accuracy"),
                     "true": round(true, 4), **{k: round(v / true, 3) if true else round(v, 4) for k, v in est.items()}})
    table = pd.DataFrame(rows)
    noisy = table[table["true"] > 0]
    within = {k: f"{int(((noisy[k] >= 0.75) & (noisy[k] <= 1.25)).sum())}/{len(noisy)}" for k in ESTIMATORS}
    pd.set_option("display.width", 250)
    print(table.to_string(index=False))
    print("within ±25% of the truth:", within)
    if a.json:
        a.json.write_text(json.dumps({"runs": rows, "within_25pct": within}, indent=1) + "\n")


if __name__ == "__main__":
    main()
