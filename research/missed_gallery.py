"""Where do the remaining errors on human-like noise sit? (issue 13, item 3: "which class pairs, what the
missed samples look like"). On a finished ``eval-noise`` run: per (true class -> given class) pair, how many
flips there are and how many the top-k of ``mislabel_score`` (k = number of flips) and the ``mislabeled``
category catch; per (given -> predicted) pair, the clean images ranked inside the top-k (false alarms); and
a gallery PNG of the flips ranked most innocent and the clean images ranked most suspicious.

    python research/missed_gallery.py bench-out/anneal-verify/c500-inst20/seed-0 \
        --images bench-out/nearly-clean/data/cifar10-train-500pc.parquet \
        --png bench-out/missed-inst20.png --json research/results/missed-inst20-machineA.json
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from memscan.report import read_frame


def load(run: Path) -> pd.DataFrame:
    df = read_frame(run)
    truth = pd.read_csv(run / "truth.csv").set_index("path")
    df["flipped"] = truth.loc[df["path"], "flipped"].to_numpy().astype(bool)
    names = sorted(df["label_name"].unique())
    df["true_name"] = df["path"].str.split("/").str[1]   # <split>/<class>/<file>
    assert set(df["true_name"]) <= set(names), "paths do not carry the true class"
    k = int(df["flipped"].sum())
    df["in_top_k"] = df["mislabel_rank"] <= k
    return df


def pair_table(df: pd.DataFrame) -> tuple[list, list]:
    flips = df[df["flipped"]]
    caught = (flips.groupby(["true_name", "label_name"])
              .agg(flips=("flipped", "size"), top_k=("in_top_k", "sum"),
                   category=("category", lambda c: int((c == "mislabeled").sum())))
              .sort_values("flips", ascending=False).reset_index())
    caught["top_k_recall"] = (caught["top_k"] / caught["flips"]).round(3)
    alarms = df[~df["flipped"] & df["in_top_k"]]
    false = (alarms.groupby(["label_name", "pred_name"]).size().rename("clean_in_top_k")
             .sort_values(ascending=False).reset_index())
    return caught.to_dict("records"), false.to_dict("records")


def gallery(df: pd.DataFrame, images: Path, png: Path, per_row: int = 12):
    from matplotlib.figure import Figure
    data = pq.read_table(images, columns=["path", "image"]).to_pandas().set_index("path")["image"]
    missed = df[df["flipped"]].sort_values("mislabel_rank", ascending=False).head(2 * per_row)
    alarms = df[~df["flipped"]].sort_values("mislabel_rank").head(2 * per_row)
    fig = Figure(figsize=(per_row * 1.2, 4 * 1.6), dpi=100, layout="constrained")
    for sub, (rows, title) in zip(fig.subfigures(2, 1), ((missed, "flips ranked most innocent (missed)"),
                                                         (alarms, "clean images ranked most suspicious"))):
        sub.suptitle(title, fontsize=10, weight="bold")
        axes = sub.subplots(2, per_row)
        for ax, (_, r) in zip(axes.flat, rows.iterrows()):
            ax.imshow(np.asarray(Image.open(io.BytesIO(data[r["path"]])).convert("RGB")))
            ax.set_title(f"given {r['label_name'][:5]}\ntrue {r['true_name'][:5]}\n#{r['mislabel_rank']}",
                         fontsize=6)
        for ax in axes.flat:
            ax.axis("off")
    fig.savefig(png)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--images", type=Path, required=True, help="the Parquet manifest holding the image bytes")
    ap.add_argument("--png", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    df = load(a.run)
    caught, false = pair_table(df)
    res = {"run": str(a.run), "flips": int(df["flipped"].sum()),
           "top_k_recall": round(float(df.loc[df["flipped"], "in_top_k"].mean()), 4),
           "flip_pairs": caught, "false_alarm_pairs": false[:20]}
    print(json.dumps({k: v for k, v in res.items() if k != "false_alarm_pairs"} | {"flip_pairs": caught[:12],
                      "false_alarm_pairs": false[:12]}, indent=1, default=int))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=int) + "\n")
    if a.png:
        gallery(df, a.images, a.png)


if __name__ == "__main__":
    main()
