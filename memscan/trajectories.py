"""Per-sample per-epoch trajectories on disk, written an epoch at a time.

``trajectories/epoch-NNNN.parquet`` (one file per finished epoch, written then renamed, so a crash
never leaves a half-written epoch): epoch, sample_id, grad_sq, loss, margin, correct, pred (the
class the training step predicted, -1 where the sample was not seen; absent from runs recorded
before it was). The folder reads as one table (``pandas.read_parquet(dir)``, ``duckdb 'trajectories/*.parquet'``). Memory stays
O(N) whatever the number of epochs; scores stream the epochs back with ``read_epochs``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import RunFolderError
from .files import is_regular_file, write_atomic_with
from .run_folder import EPOCH_FILE
from .signals import EpochRecord

SCHEMA = pa.schema([
    ("epoch", pa.int32()), ("sample_id", pa.int64()), ("grad_sq", pa.float32()),
    ("loss", pa.float32()), ("margin", pa.float32()), ("correct", pa.bool_()), ("pred", pa.int16()),
])


def epoch_file(folder: Path, epoch: int) -> Path:
    return Path(folder) / f"epoch-{epoch:04d}.parquet"


def epoch_files(folder: Path) -> list[Path]:
    """The folder's epoch files, in epoch order (other files are not ours and are left out)."""
    return sorted(p for p in Path(folder).iterdir() if EPOCH_FILE.fullmatch(p.name))


def write_epoch(folder: Path, rec: EpochRecord) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(rec.loss)
    table = pa.table([
        pa.array(np.full(n, rec.epoch, np.int32)), pa.array(np.arange(n, dtype=np.int64)),
        pa.array(rec.grad_sq.astype(np.float32)), pa.array(rec.loss.astype(np.float32)),
        pa.array(rec.margin.astype(np.float32)), pa.array(rec.correct.astype(bool)),
        pa.array(np.full(n, -1, np.int16) if rec.pred is None else rec.pred.astype(np.int16)),
    ], schema=SCHEMA)
    return write_atomic_with(epoch_file(folder, rec.epoch),
                             lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def check_epoch_files(folder: Path, n: int, num_classes: int, last_epoch: int) -> None:
    """Before a resumed run builds on them: epochs 0..``last_epoch`` each have a regular file of memscan's schema
    with one row per sample (ids 0..n-1) and predicted classes in range. A damaged or planted file is named in a
    ``RunFolderError``, instead of failing deep in the scores or entering them silently."""
    folder = Path(folder)
    names = {f.name for f in epoch_files(folder)} if folder.is_dir() else set()
    for e in range(last_epoch + 1):
        f = epoch_file(folder, e)
        why = _epoch_file_problem(f, n, num_classes) if f.name in names else "is missing"
        if why:
            raise RunFolderError(f"trajectory file '{f}' {why}; the run cannot be resumed from its checkpoint: "
                                 "start a new run with --overwrite")


def _epoch_file_problem(f: Path, n: int, num_classes: int) -> str | None:
    if f.is_symlink() or not is_regular_file(f):
        return "is not a regular file"
    try:
        schema = pq.read_schema(f)
        want = {fld.name: fld.type for fld in SCHEMA}
        missing = [k for k in want if k != "pred" and k not in schema.names]
        wrong = [k for k in schema.names if k in want and schema.field(k).type != want[k]]
        if missing or wrong:
            return f"lacks or mistypes {', '.join(missing + wrong)}"
        t = pq.read_table(f, columns=["sample_id"] + (["pred"] if "pred" in schema.names else []))
    except Exception as e:   # pyarrow raises several types for a damaged file
        return f"is unreadable ({type(e).__name__})"
    if t.num_rows != n:
        return f"has {t.num_rows} rows for {n} samples"
    ids = np.sort(t.column("sample_id").to_numpy())
    if not np.array_equal(ids, np.arange(n)):
        return "does not hold each sample id once"
    if "pred" in t.column_names:
        pred = t.column("pred").to_numpy()
        if len(pred) and (pred.min() < -1 or pred.max() >= num_classes):
            return "holds predicted classes out of range"
    return None


def read_epochs(folder: Path, *, upto: int | None = None):
    """Yield ``EpochRecord`` per epoch in order; epochs < ``upto`` when given."""
    for f in epoch_files(folder):
        t = pq.read_table(f)
        epoch = int(t.column("epoch")[0].as_py())
        if upto is not None and epoch >= upto:
            break
        order = np.argsort(t.column("sample_id").to_numpy())
        col = lambda name: t.column(name).to_numpy(zero_copy_only=False)[order]
        pred = col("pred") if "pred" in t.column_names else None
        yield EpochRecord(epoch, col("grad_sq"), col("loss"), col("margin"), col("correct"), pred=pred)


def read_predictions(folder: Path):
    """Yield (epoch, pred) per epoch in order, reading only the predicted-class column (pred None in runs
    recorded before it was); the late-window agreement behind a suggestion streams these."""
    for f in epoch_files(folder):
        names = pq.read_schema(f).names
        t = pq.read_table(f, columns=["epoch", "sample_id"] + (["pred"] if "pred" in names else []))
        epoch = int(t.column("epoch")[0].as_py())
        if "pred" not in names:
            yield epoch, None
            continue
        order = np.argsort(t.column("sample_id").to_numpy())
        yield epoch, t.column("pred").to_numpy()[order]


def sample_history(folder: Path, ids, column: str = "margin") -> np.ndarray:
    """[len(ids), epochs] of one per-epoch value for a few samples (NaN where not seen): the gallery's
    sparklines. Reads one column of each epoch file."""
    ids = np.asarray(ids, np.int64)
    files = epoch_files(folder)
    out = np.full((len(ids), len(files)), np.nan, np.float32)
    for j, f in enumerate(files):
        t = pq.read_table(f, columns=["sample_id", column])
        sid = t.column("sample_id").to_numpy()
        vals = t.column(column).to_numpy(zero_copy_only=False)
        pos = np.full(int(sid.max()) + 1 if len(sid) else 0, -1, np.int64)
        pos[sid] = np.arange(len(sid))
        ok = ids < len(pos)
        where = np.where(ok, pos[np.minimum(ids, max(len(pos) - 1, 0))], -1)
        out[where >= 0, j] = vals[where[where >= 0]]
    return out
