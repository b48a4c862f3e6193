"""Decode speed and cache size per image at the sizes users train at (issue 15, item 3): the first load decodes
and resizes every image into memscan's uint8 cache, the second reads the cache.

    python benchmarks/decode_speed.py bench-out/ft/audit-5cls-1000pc.parquet --per-class 200 --sizes 32,128,224 \
        --out benchmarks/results/decode-speed-machineA.json
"""
import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from memscan.data import load_images, load_index


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--sizes", default="32,128,224")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    t = load_index(a.dataset)
    t = t.subset(np.sort(np.concatenate([np.flatnonzero(t.labels == c)[:a.per_class] for c in np.unique(t.labels)])))
    res = {"dataset": a.dataset, "images": len(t), "workers": a.workers, "date": str(date.today()),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "sizes": {}}
    for size in map(int, a.sizes.split(",")):
        with tempfile.TemporaryDirectory() as d:
            s = time.perf_counter()
            load_images(t, image_size=size, workers=a.workers, cache_dir=Path(d))
            first = time.perf_counter() - s
            s = time.perf_counter()
            again = load_images(t, image_size=size, workers=a.workers, cache_dir=Path(d))
            cached = time.perf_counter() - s
            size_bytes = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())
        res["sizes"][size] = {"decode_images_per_s": round(len(t) / first, 1), "cached_load_s": round(cached, 3),
                              "cache_bytes_per_image": round(size_bytes / len(t)), "from_cache": again.from_cache}
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
