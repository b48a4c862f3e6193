"""Which descriptor finds planted near duplicates (decision: ``memscan.duplicates`` uses 16x16 thumbnails)?

For each planted copy in ``benchmarks/planted.py``'s output: its cosine to its original under each
descriptor (grayscale thumbnails of 8 and 16 pixels; penultimate features of a memscan model trained
7 epochs on a disjoint 5,000-image CIFAR-10 subset), and for the unplanted images their nearest
other image's cosine (the false-positive side: unplanted pairs above a threshold are either real
CIFAR-10 near duplicates or false alarms).

    python research/duplicate_descriptors.py bench-out/planted bench-out/inst/cifar-inst20-500pc/memscan
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from memscan.data import load_images, load_index
from memscan.data.loader import InMemorySource
from memscan.duplicates import nearest, thumbnails
from memscan.models import create_model, load_weights_only


@torch.no_grad()
def features(run: Path, images):
    saved = load_weights_only(run / "model.pt")
    model = create_model(saved["model"], saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    src = InMemorySource(images, np.zeros(len(images), np.int64), mean=saved["mean"], std=saved["std"],
                         device=torch.device("cpu"))
    got = {}
    h = model.head.register_forward_pre_hook(lambda m, a: got.__setitem__("f", a[0]))
    out = []
    for idx in torch.arange(len(images)).split(512):
        model(src.batch(idx)[0])
        out.append(got["f"].float())
    h.remove()
    f = torch.cat(out).numpy()
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def main(planted: Path, run: Path):
    truth = json.loads((planted / "truth.json").read_text())
    d = load_images(load_index(planted / "train.parquet"), workers=1, image_size=32)
    paths = {p: i for i, p in enumerate(d.table.paths)}
    descs = {"thumb8": thumbnails(d.images, side=8), "thumb16": thumbnails(d.images, side=16),
             "features": features(run, d.images)}
    cp = np.array([paths[r["copy"]] for r in truth["duplicates"]])
    orig = np.array([paths[r["original"]] for r in truth["duplicates"]])
    kinds = np.array([r["transform"] for r in truth["duplicates"]])
    planted_ids = set(cp) | set(orig)
    clean = np.array([i for i in range(len(d.images)) if i not in planted_ids])
    res = {}
    for name, f in descs.items():
        pair = (f[cp] * f[orig]).sum(1)
        idx, sim = nearest(f[clean], f[clean], 1, same=True)
        row = {"pair_min_by_transform": {k: float(pair[kinds == k].min()) for k in sorted(set(kinds))},
               "pair_p10_by_transform": {k: float(np.percentile(pair[kinds == k], 10)) for k in sorted(set(kinds))},
               "clean_nn_percentiles_99_99.9_max": np.percentile(sim[:, 0], [99, 99.9, 100]).round(4).tolist()}
        for t in (0.85, 0.9, 0.93, 0.95, 0.97):
            row[f"t{t}"] = {"recall": {k: float((pair[kinds == k] >= t).mean()) for k in sorted(set(kinds))},
                            "clean_images_with_a_match": int((sim[:, 0] >= t).sum())}
        res[name] = row
    print(json.dumps(res, indent=1))
    out = Path(__file__).parent / "results" / "duplicate-descriptors-machineA.json"
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
