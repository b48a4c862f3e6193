"""Write the noisy labels a finished benchmark run audited as a manifest of its own, with the truth beside it.

A recipe study must change the recipe and nothing else: ``eval-noise --kind instance`` draws its flips from a
reference model, and a benchmark run records the labels it audited in its report. This writes the subset's
images with those labels (``DEST``, a Parquet-bytes manifest) and ``DEST-truth.csv`` (``path,flipped``), so that
``memscan run DEST ...`` audits exactly the same noise and ``memscan eval-noise --from-run RUN --truth
DEST-truth.csv`` scores it.

    python research/noisy_manifest.py SUBSET.parquet RUN/report.parquet DEST.parquet
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("subset", type=Path, help="the clean manifest the run audited (path, label_name, image)")
    ap.add_argument("report", type=Path, help="the run's report.parquet (its label_name is the audited label)")
    ap.add_argument("dest", type=Path, help="the noisy manifest to write (.parquet)")
    a = ap.parse_args()
    t = pq.read_table(a.subset)
    r = pq.read_table(a.report, columns=["path", "label_name"]).to_pydict()
    given = dict(zip(r["path"], r["label_name"]))
    paths = t.column("path").to_pylist()
    clean = t.column("label_name").to_pylist()
    noisy = [given[p] for p in paths]
    pq.write_table(t.set_column(t.column_names.index("label_name"), "label_name", pa.array(noisy)), a.dest)
    truth = a.dest.with_name(a.dest.stem + "-truth.csv")
    truth.write_text("path,flipped\n" + "".join(f"{p},{int(c != n)}\n" for p, c, n in zip(paths, clean, noisy)))
    print(f"{a.dest}: {sum(c != n for c, n in zip(clean, noisy))} of {len(paths)} labels differ; truth in {truth}")


if __name__ == "__main__":
    main()
