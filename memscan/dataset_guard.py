"""Where memscan may write: never inside, over, or around the dataset it audits.

What belongs to a dataset depends on its kind:

* an image folder: everything under its root (a file written there would become a sample, or a
  folder a class, of the next run);
* a manifest: the manifest file and every image it lists (the folder around them may hold other
  things, such as ``memscan-runs``);
* a Parquet file of image bytes: that file.

``check_folder`` refuses an output folder inside the dataset or holding any part of it;
``check_file`` refuses an output file that is part of the dataset. The guard is built from a
``SampleTable`` during a run and from a report (metadata and ``path`` column) by its readers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


def _abs(p) -> str:
    return os.path.normpath(str(Path(p).expanduser().resolve()))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class DatasetGuard:
    roots: tuple               # folders nothing may be written under: a folder dataset's root and the real
                               # folders its images sit in (a class folder may link outside the root)
    files: frozenset           # absolute real paths of the manifest / Parquet file / listed images
    where: str                 # the dataset as the user named it, for messages

    @classmethod
    def for_dataset(cls, source: str, location, root, paths) -> "DatasetGuard":
        loc = _abs(location)
        dirs = {os.path.dirname(p) for p in paths}
        if source == "folder":
            real = {_abs(os.path.join(loc, d)) for d in dirs} | {loc}
            return cls(tuple(r for r in sorted(real) if not any(o != r and _inside(r, o) for o in real)),
                       frozenset(), str(location))
        files = {loc}
        if source == "manifest":
            base = _abs(root)
            real = {d: _abs(os.path.join(base, d)) for d in dirs}   # links resolved once per folder
            files.update(os.path.join(real[os.path.dirname(p)], os.path.basename(p)) for p in paths)
        return cls((), frozenset(files), str(location))

    @classmethod
    def for_table(cls, table) -> "DatasetGuard":
        return cls.for_dataset(table.source, table.location, table.root, table.paths)

    def check_folder(self, folder, *, what: str = "--out", may_hold: bool = False) -> None:
        """An output folder must lie outside the dataset and (unless ``may_hold``: a folder memscan
        only adds named files to, such as the decode cache) must not hold any part of it."""
        f = _abs(folder)
        for root in self.roots:
            if _inside(f, root):
                raise ConfigError(f"{what} '{folder}' is inside the dataset folder '{self.where}'"
                                  + ("" if root == _abs(self.where) else f" (its images in '{root}')")
                                  + "; memscan never writes there: choose a folder outside it")
            if not may_hold and _inside(root, f):
                raise ConfigError(f"{what} '{folder}' contains the dataset '{self.where}'; choose a folder that "
                                  "does not hold the dataset")
        if may_hold:
            if f in self.files:
                raise ConfigError(f"{what} '{folder}' is part of the dataset '{self.where}'; choose another folder")
            return
        held = next((p for p in self.files if _inside(p, f)), None)
        if held is not None:
            raise ConfigError(f"{what} '{folder}' holds '{held}', part of the dataset '{self.where}'; choose a "
                              "folder that holds none of the dataset's files")

    def check_file(self, path, *, what: str = "--out") -> None:
        """An output file must not be a file of the dataset or lie inside a folder dataset."""
        p = _abs(path)
        if p in self.files or any(_inside(p, r) for r in self.roots):
            raise ConfigError(f"{what} '{path}' is part of the dataset '{self.where}'; memscan never writes "
                              "there: choose a path outside it")


class Guards:
    """Several datasets' guards as one: an output must stay out of each (a run's data and its --test set)."""

    def __init__(self, *guards: DatasetGuard):
        self.guards = guards

    def check_folder(self, folder, **kw) -> None:
        for g in self.guards:
            g.check_folder(folder, **kw)

    def check_file(self, path, **kw) -> None:
        for g in self.guards:
            g.check_file(path, **kw)


def guard_for_report(report_path) -> Guards:
    """The guards of the datasets a report was made from: its data (metadata and path column) and, for a run
    with ``--test`` or ``--val``, that set (indexed again when it is still there, else its location alone)."""
    from .report import read_frame, read_metadata
    meta = read_metadata(report_path)
    ds = meta.dataset
    paths = []
    if ds.source != "parquet-bytes":
        paths = read_frame(report_path, ["path"])["path"].tolist()   # a damaged path column: a ReportError
    loc = Path(ds.location)
    guards = [DatasetGuard.for_dataset(ds.source, loc, loc.parent if ds.source != "folder" else loc, paths)]
    test = (meta.audit or {}).get("test") if isinstance(meta.audit, dict) else None
    if isinstance(test, dict) and isinstance(test.get("location"), str):
        guards.append(_test_guard(test["location"]))
    val = _val_location(report_path)
    if val is not None:
        guards.append(_test_guard(val))
    return Guards(*guards)


def _val_location(report_path) -> str | None:
    """The --val set of the run whose folder holds this report (its run-args.json), if any."""
    from .errors import MemscanError
    from .report import resolve_report_path
    from .run_folder import RunFolder
    try:
        val = RunFolder(resolve_report_path(report_path).parent).load_args().get("val_dataset")
    except MemscanError:   # a report without its run folder's arguments: nothing more to guard
        return None
    return val if isinstance(val, str) else None


def _test_guard(location: str) -> DatasetGuard:
    from .data import load_index
    from .errors import MemscanError
    try:
        return DatasetGuard.for_table(load_index(location))
    except MemscanError:   # moved or changed since the run: guard what its location says
        p = Path(location)
        return (DatasetGuard.for_dataset("folder", p, p, []) if p.is_dir() or not p.suffix
                else DatasetGuard.for_dataset("parquet-bytes", p, p.parent, []))
