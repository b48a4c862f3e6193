"""Every file memscan writes: atomically, as plain JSON, and never over a file it did not write.

* ``write_atomic_with(dest, write)`` (and the bytes/text/JSON shorthands): the content is written
  to ``NAME.tmp<pid>`` and renamed over ``dest``, so a crash, a kill or a full disk leaves at most
  that temporary file (``memscan resume`` removes it) and never a truncated file; the previous
  ``dest`` survives until the new one is complete. A full disk becomes ``OutputError`` (exit 74).
* ``to_jsonable``: the one converter of numpy scalars/arrays and paths to JSON values.
* ``check_output_file(path, signature)``: an output path given by the user is a file (not a
  folder) and, if it exists, was written by memscan (its first bytes hold ``signature``).
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from pathlib import Path

import numpy as np

from .errors import ConfigError, OutputError, OutputExistsError

TMP_NAME = re.compile(r"\.tmp\d+$")   # what write_atomic_with leaves behind when it is cut short
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)


def is_regular_file(path) -> bool:
    """``path`` (followed through links) is a regular file: not a folder, pipe or device, which a read would
    fail on or block on for good."""
    try:
        return stat.S_ISREG(Path(path).stat().st_mode)
    except OSError:
        return False


def write_atomic_with(dest, write) -> Path:
    """``write(tmp_path)`` writes the content; it is then renamed over ``dest`` (atomic on POSIX).
    On any error the temporary file is removed and ``dest`` (if it existed) is untouched; an
    out-of-space error is raised as ``OutputError`` naming the file."""
    dest = Path(dest)
    if dest.is_dir() and not dest.is_symlink():   # os.replace cannot put a file there: say so before any work
        raise OutputExistsError(f"'{dest}' is a folder where memscan writes a file; move it away and rerun")
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)   # a leftover (or planted link) of that name is never written through
        write(tmp)
        os.replace(tmp, dest)
    except OSError as e:
        if e.errno in NO_SPACE:
            err = OutputError(f"cannot write '{dest}' ({e.strerror}); nothing half-written was left"
                              + ("; the previous version is intact" if dest.exists() else "")
                              + ": free disk space and rerun")
            err.strerror = e.strerror   # callers that say more (e.g. how to resume) reuse it
            raise err from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def write_bytes_atomic(dest, data: bytes) -> Path:
    return write_atomic_with(dest, lambda tmp: Path(tmp).write_bytes(data))


def write_text_atomic(dest, text: str) -> Path:
    return write_atomic_with(dest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomic(dest, obj) -> Path:
    return write_text_atomic(dest, dumps(obj) + "\n")


def to_jsonable(o):
    """``json.dumps(default=...)`` hook: numpy scalars and arrays, paths. Non-finite floats are
    written as null by ``dumps`` (JSON has no NaN)."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def plain(v):
    """One value of a DataFrame row as plain JSON: numpy scalars to Python, NaN (absent) to None."""
    if isinstance(v, np.generic):
        v = v.item()
    return None if isinstance(v, float) and v != v else v


def records(df, columns=None) -> list[dict]:
    """DataFrame rows as plain JSON dicts (``columns``: those, in that order)."""
    rows = df.to_dict("records") if columns is None else df[list(columns)].to_dict("records")
    return [{k: plain(v) for k, v in r.items()} for r in rows]


def _finite(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def dumps(obj, *, indent: int | None = 1) -> str:
    """Strict JSON (NaN/inf become null: other tools' parsers reject them) with numpy values."""
    return json.dumps(_finite(json.loads(json.dumps(obj, default=to_jsonable))), indent=indent)


def check_output_file(path, *, signature: bytes, what: str = "--out", example: str = "out",
                      at_start: bool = False) -> Path:
    """Refuse a folder, or an existing file memscan did not write (no ``signature`` in its first
    4 KiB; with ``at_start``, not starting with it: formats whose first bytes are always memscan's), as an
    output file; then create its parent folder."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} '{p}' is a folder; give a file path, e.g. '{p / example}'")
    if any(a.exists() and not a.is_dir() for a in p.parents):
        raise ConfigError(f"{what} '{p}': a part of this path is a file, not a folder; give a path inside a folder")
    if p.exists() or p.is_symlink():
        if not p.is_file() or p.is_symlink():
            raise OutputExistsError(f"{what} '{p}' exists and is not a regular file; refusing to overwrite it: "
                                    "choose another path")
        with open(p, "rb") as f:
            head = f.read(4096)
        if not (head.startswith(signature) if at_start else signature in head):
            raise OutputExistsError(f"{what} '{p}' exists and was not written by memscan; refusing to overwrite "
                                    "it: choose another path or remove the file yourself")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what} '{p}': cannot create its folder ({e.strerror or e})") from None
    return p

