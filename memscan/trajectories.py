"""Per-sample per-epoch trajectories on disk, written an epoch at a time.

``trajectories/epoch-NNNN.parquet`` (one file per finished epoch, written then renamed, so a crash
never leaves a half-written epoch): epoch, sample_id, grad_sq, loss, margin, correct. The folder
reads as one table (``pandas.read_parquet(dir)``, ``duckdb 'trajectories/*.parquet'``). Memory stays
O(N) whatever the number of epochs; scores stream the epochs back with ``read_epochs``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .files import write_atomic_with
from .run_folder import EPOCH_FILE
from .signals import EpochRecord

SCHEMA = pa.schema([
    ("epoch", pa.int32()), ("sample_id", pa.int64()), ("grad_sq", pa.float32()),
    ("loss", pa.float32()), ("margin", pa.float32()), ("correct", pa.bool_()),
])


def epoch_file(folder: Path, epoch: int) -> Path:
    return Path(folder) / f"epoch-{epoch:04d}.parquet"


def write_epoch(folder: Path, rec: EpochRecord) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(rec.loss)
    table = pa.table([
        pa.array(np.full(n, rec.epoch, np.int32)), pa.array(np.arange(n, dtype=np.int64)),
        pa.array(rec.grad_sq.astype(np.float32)), pa.array(rec.loss.astype(np.float32)),
        pa.array(rec.margin.astype(np.float32)), pa.array(rec.correct.astype(bool)),
    ], schema=SCHEMA)
    return write_atomic_with(epoch_file(folder, rec.epoch),
                             lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_epochs(folder: Path, *, upto: int | None = None):
    """Yield ``EpochRecord`` per epoch in order; epochs < ``upto`` when given."""
    for f in sorted(p for p in Path(folder).iterdir() if EPOCH_FILE.fullmatch(p.name)):
        t = pq.read_table(f)
        epoch = int(t.column("epoch")[0].as_py())
        if upto is not None and epoch >= upto:
            break
        order = np.argsort(t.column("sample_id").to_numpy())
        col = lambda name: t.column(name).to_numpy(zero_copy_only=False)[order]
        yield EpochRecord(epoch, col("grad_sq"), col("loss"), col("margin"), col("correct"))
