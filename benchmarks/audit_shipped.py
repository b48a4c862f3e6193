"""What memscan's data audit finds in a dataset as shipped: image issues, duplicate groups, test-to-train leaks.

The same functions ``memscan run DATASET --test TEST`` calls after training (``memscan.data_audit``), on
the decoded images alone: the audit reads pixels, not the model, so the counts equal a run's (only
``duplicate_suspect``, which needs the run's ``mislabel_score``, is left out). Writes the figures as JSON
and a PNG of sample pairs (test image left, its training twin right).

    python benchmarks/audit_shipped.py ../shared/data/cifar10/train.parquet ../shared/data/cifar10/test.parquet \\
        --out benchmarks/results/audit-cifar10-shipped-machineA.json --pairs bench-out/cifar10-leaks.png
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from memscan.data import load_images, load_index
from memscan.data_audit import audit_images, audit_leaks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train", type=Path)
    ap.add_argument("test", type=Path, nargs="?")
    ap.add_argument("--out", type=Path, required=True, help=".json for the figures")
    ap.add_argument("--pairs", type=Path, help=".png with sample leak pairs")
    ap.add_argument("--image-size", type=int, default=None)
    a = ap.parse_args(argv)
    table = load_index(a.train)
    d = load_images(table, image_size=a.image_size)
    t0 = time.perf_counter()
    cols, summary, index = audit_images(d.images, d.sizes, d.table.labels, d.table.paths,
                                         np.zeros(len(d.table)))
    summary["audit_s"] = round(time.perf_counter() - t0, 2)
    summary["n"] = len(d.table)
    groups = cols["duplicate_group"]
    mixed = [int(g) for g in np.unique(groups[cols["duplicate_conflict"]])]
    summary["conflicting_examples"] = [[d.table.paths[i] + " = " + d.table.class_names[d.table.labels[i]]
                                        for i in np.flatnonzero(groups == g)] for g in mixed[:10]]
    if a.test is not None:
        tt = load_index(a.test)
        td = load_images(tt, image_size=d.images.shape[-1])
        t0 = time.perf_counter()
        pairs, per_train = audit_leaks(td.table, td.images, d.table.paths, d.table.class_names, d.table.labels,
                                       d.images, index)
        summary["test"] = {"n": len(td.table), "leaked": pairs.num_rows,
                           "exact": int(sum(k == "exact" for k in pairs["kind"].to_pylist())),
                           "label_differs": int(pairs.num_rows - sum(pairs["same_label"].to_pylist())),
                           "leak_s": round(time.perf_counter() - t0, 2)}
        df = pairs.to_pandas()
        summary["test"]["label_differs_examples"] = df[~df["same_label"]].head(10).to_dict("records")
        if a.pairs:
            draw_pairs(df, tt, table, a.pairs)
    a.out.write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("conflicting_examples",)}, indent=1,
                     default=str))


def draw_pairs(df, test_table, train_table, dest: Path, rows: int = 4, per_row: int = 6):
    """A grid of leak pairs spread over the similarity range (test left, training right)."""
    pos_t = {p: i for i, p in enumerate(test_table.paths)}
    pos_r = {p: i for i, p in enumerate(train_table.paths)}
    pick = df.iloc[np.linspace(0, len(df) - 1, min(len(df), rows * per_row)).astype(int)] if len(df) else df
    cell, pad = 64, 4
    canvas = Image.new("RGB", (per_row * (2 * cell + 3 * pad), rows * (cell + 16 + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, r in enumerate(pick.itertuples()):
        x, y = (k % per_row) * (2 * cell + 3 * pad), (k // per_row) * (cell + 16 + pad)
        for j, (tab, pos, p) in enumerate(((test_table, pos_t, r.test_path), (train_table, pos_r, r.train_path))):
            im = Image.open(io.BytesIO(tab.read_bytes(pos[p]))).convert("RGB").resize((cell, cell))
            canvas.paste(im, (x + j * (cell + pad), y))
        draw.text((x, y + cell + 2), f"{r.similarity:.3f} {r.test_label}/{r.train_label}"[:22], fill="black")
    canvas.save(dest)


if __name__ == "__main__":
    main()
