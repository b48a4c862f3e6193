"""Atomic file writes: every file memscan writes appears whole or not at all.

A crash, a kill or a full disk mid-write leaves at most ``NAME.tmp<pid>`` next to the target (which
``memscan resume`` removes) and never a truncated report, trajectory or checkpoint.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

TMP_NAME = re.compile(r"\.tmp\d+$")   # what write_atomic_with leaves behind when it is cut short


def write_atomic_with(dest, write) -> Path:
    """``write(tmp_path)`` writes the content; it is then renamed over ``dest`` (atomic on POSIX).
    On any error the temporary file is removed and ``dest`` (if it existed) is untouched."""
    dest = Path(dest)
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
