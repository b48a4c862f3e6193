"""Real, human-validated label errors: where memscan ranks them, side by side with cleanlab's 5-fold pipeline.

Northcutt, Athalye & Mueller (2021), "Pervasive label errors in test sets destabilize machine learning
benchmarks", had five Mechanical Turk workers vote on candidate errors of MNIST's test set. Their votes are
published (github.com/cleanlab/label-errors, ``mturk/mnist_mturk.json``: for each candidate the index in the
official test set, the given label and how many workers chose the given label, the guessed one or neither).
An image is a label error here, as in the paper, when fewer than 3 of the 5 workers confirmed its given label:
15 of MNIST's 10,000 test images. ../shared/data's MNIST files are numbered by their index in the official set
(test image i is ``test/<label>/<60000 + i>.png``), so the votes map onto the images exactly; each mapped
image's folder must agree with the given label the votes were cast on, or the script stops.

Both methods audit the set as shipped with the same network and recipe: memscan's default run, and cleanlab's
``get_label_quality_scores`` / ``find_label_issues`` on 5-fold cross-validated probabilities (20 epochs per
fold, as ``baselines.py``). With 15 errors among 10,000 images the AUROC moves by 1/15 per error that ranks
low; the ranks of every error are written out so a reader can see which ones each method misses.

    python benchmarks/real_errors.py --mturk PATH/TO/mnist_mturk.json --out bench-out/real/mnist-test.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from memscan.config import RunConfig
from memscan.crossfit import cross_val_probs
from memscan.data import load_index
from memscan.evaluate import detection_metrics, flag_metrics
from memscan.pipeline import run
from memscan.prepare import prepare
from memscan.report import read_report

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: fewer confirmations of the given label than this, out of 5 workers, is a label error (the paper's majority)
CONFIRMED = 3


def human_errors(mturk: Path, paths: list[str], labels: np.ndarray, class_names: list[str]) -> tuple[np.ndarray, list]:
    """(truth mask over ``paths``, the votes of each error) from the published MNIST votes."""
    where = {int(Path(p).stem) - 60000: i for i, p in enumerate(paths)}
    truth = np.zeros(len(paths), bool)
    errors = []
    for c in json.loads(mturk.read_text()):
        i = where.get(int(c["id"]))
        if i is None:
            raise SystemExit(f"{mturk}: test image {c['id']} is not in the dataset (expected test/<label>/"
                             f"{60000 + int(c['id'])}.png); use ../shared/data/mnist/test.parquet")
        if class_names[labels[i]] != str(c["given_original_label_name"]):
            raise SystemExit(f"{mturk}: image {c['id']} is labelled {class_names[labels[i]]!r} here but "
                             f"{c['given_original_label_name']!r} in the votes: not the same numbering")
        if c["mturk"]["given"] < CONFIRMED:
            truth[i] = True
            errors.append({"index": i, "id": int(c["id"]), "path": paths[i], "given": c["given_original_label_name"],
                           "guessed": c["our_guessed_label_name"], "votes": c["mturk"]})
    return truth, errors


def rounded(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def ranks_of(score: np.ndarray, truth: np.ndarray) -> list[int]:
    """1 = the most suspicious image; ties share their average rank."""
    return [int(r) for r in rankdata(-score)[truth]]


def summary(score: np.ndarray, truth: np.ndarray) -> dict:
    r = ranks_of(score, truth)
    return dict(rounded(detection_metrics(score, truth)), ranks=sorted(r),
                **{f"in_top_{k}": int(sum(x <= k for x in r)) for k in (15, 50, 100, 500)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mturk", type=Path, required=True, help="mturk/mnist_mturk.json of cleanlab/label-errors")
    ap.add_argument("--dataset", type=Path, default=DATA / "mnist" / "test.parquet")
    ap.add_argument("--epochs", type=int, default=20, help="epochs of each cleanlab fold")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-cleanlab", action="store_true")
    ap.add_argument("--out", type=Path, required=True, help="results .json; run folders go next to it")
    a = ap.parse_args()
    work = a.out.with_suffix("")
    table = load_index(a.dataset)
    truth, errors = human_errors(a.mturk, list(table.paths), table.labels, list(table.class_names))
    base = RunConfig(augment="crop", seed=a.seed, max_epochs=30)   # digits: no mirror images
    res = {"dataset": str(a.dataset), "errors": len(errors), "n": len(table), "seed": a.seed,
           "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                      f"torch {torch.__version__}", "date": str(date.today()), "methods": {}}

    t = time.perf_counter()
    r = run(a.dataset, base, out=work / "memscan", overwrite=True)
    wall = time.perf_counter() - t
    df = read_report(r.report_path).to_pandas().set_index("path").loc[list(table.paths)]
    flagged = df["category"].to_numpy() == "mislabeled"
    res["methods"]["memscan (default stop)"] = {
        "seconds": round(wall, 1), "epochs": r.summary["epochs_trained"],
        "mislabel_score": summary(df["mislabel_score"].to_numpy(), truth),
        "1-p_given": summary(1 - df["p_given"].to_numpy(), truth),
        "category": rounded(flag_metrics(flagged, truth)), "flagged": int(flagged.sum())}
    for e in errors:
        e["memscan_rank"] = int(df["mislabel_rank"].iloc[e["index"]])
        e["memscan_pred"] = str(df["pred_name"].iloc[e["index"]])
        e["memscan_category"] = str(df["category"].iloc[e["index"]])

    if not a.skip_cleanlab:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
        cfg = base.replace(stop="none", max_epochs=a.epochs)
        prep = prepare(table, cfg)
        t = time.perf_counter()
        probs = cross_val_probs(prep, cfg, folds=a.folds, seed=a.seed, flip=cfg.flips)
        issues = find_label_issues(prep.labels, probs)
        quality = get_label_quality_scores(prep.labels, probs)
        wall = time.perf_counter() - t
        res["methods"][f"cleanlab ({a.folds}-fold CV)"] = {
            "seconds": round(wall, 1), "epochs": a.epochs * (a.folds - 1),
            "label_quality": summary(1 - quality, truth),
            "find_label_issues": rounded(flag_metrics(issues, truth)), "flagged": int(issues.sum())}
        order = rankdata(quality)
        for e in errors:
            e["cleanlab_rank"] = int(order[e["index"]])
            e["cleanlab_flagged"] = bool(issues[e["index"]])
    ref = res["methods"]["memscan (default stop)"]["seconds"]
    for m in res["methods"].values():
        m["time_vs_memscan"] = round(m["seconds"] / ref, 2)
    res["error_list"] = [{k: v for k, v in e.items() if k != "index"} for e in errors]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
