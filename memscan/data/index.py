"""The sample index: which images exist, their labels, and stable sample ids.

Three inputs give one ``SampleTable``:

* an image folder with one subfolder per class (any nesting inside a class folder);
* a CSV/TSV/Parquet manifest with a path column and a label column (paths relative to it);
* a Parquet file holding each image's bytes in a column (HF-style ``image`` struct or binary).

Sample ids are positions in the sorted list of relative paths, so the same dataset always gives
the same ids and order. Nothing here writes anything.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
MANIFEST_EXTS = (".csv", ".tsv", ".parquet", ".pq")
PATH_COLUMNS = ("path", "filepath", "file", "filename", "image_path", "img_path")
LABEL_COLUMNS = ("label_name", "label", "class", "class_name", "target", "category")
BYTES_COLUMNS = ("image", "img", "bytes", "image_bytes")


@dataclass
class SampleTable:
    """Samples in id order. ``paths`` are relative to ``root`` (or row names for byte tables)."""

    paths: list[str]
    labels: np.ndarray                 # int64 class index per sample
    class_names: list[str]
    root: Path                         # folder the paths are relative to
    source: str                        # "folder" | "manifest" | "parquet-bytes"
    location: Path                     # what the user passed
    image_bytes: list[bytes] | None = None
    ignored: list[str] = field(default_factory=list)   # non-image files seen and left out

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def file(self, i: int) -> Path:
        return self.root / self.paths[i]

    def read_bytes(self, i: int) -> bytes:
        if self.image_bytes is not None:
            return self.image_bytes[i]
        return self.file(i).read_bytes()

    def subset(self, keep: np.ndarray) -> "SampleTable":
        keep = np.asarray(keep, dtype=np.int64)
        return SampleTable(
            paths=[self.paths[i] for i in keep], labels=self.labels[keep], class_names=self.class_names,
            root=self.root, source=self.source, location=self.location,
            image_bytes=None if self.image_bytes is None else [self.image_bytes[i] for i in keep],
            ignored=self.ignored)

    def content_fingerprint(self) -> str:
        """Hash of paths, sizes and mtimes: changes when any image file changes (not labels)."""
        h = hashlib.sha256()
        if self.image_bytes is not None:
            st = self.location.stat()
            h.update(f"{self.location.resolve()}|{st.st_size}|{st.st_mtime_ns}|{len(self)}".encode())
            for p in self.paths:
                h.update(p.encode() + b"\0")
        else:
            for p in self.paths:
                st = (self.root / p).stat()
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\0".encode())
        return h.hexdigest()[:20]

    def fingerprint(self) -> str:
        """Content fingerprint plus labels and class names: identifies the labelled dataset."""
        h = hashlib.sha256(self.content_fingerprint().encode())
        h.update("\0".join(self.class_names).encode())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:20]


def load_index(location, *, path_column: str | None = None, label_column: str | None = None) -> SampleTable:
    """Index an image folder or a manifest. Raises ``DatasetError`` with the fix on bad input."""
    loc = Path(location).expanduser()
    if not loc.exists():
        raise DatasetError(f"dataset path '{loc}' does not exist; pass an image folder (one subfolder "
                           "per class) or a .csv/.parquet manifest")
    if loc.is_dir():
        return _index_folder(loc)
    if loc.suffix.lower() in MANIFEST_EXTS:
        return _index_manifest(loc, path_column, label_column)
    raise DatasetError(f"'{loc}' is a file, not a dataset; pass the folder that holds one subfolder per "
                       "class, or a .csv/.parquet manifest")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _index_folder(root: Path) -> SampleTable:
    try:
        entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    except PermissionError:
        raise DatasetError(f"cannot read folder '{root}': permission denied; fix its permissions") from None
    class_dirs = [e for e in entries if (root / e).is_dir()]
    loose = [e for e in entries if (root / e).is_file() and _is_image(e)]
    if not class_dirs:
        if loose:
            raise DatasetError(f"'{root}' holds images but no class subfolders; put each class's images "
                               "in a subfolder named after the class")
        raise DatasetError(f"'{root}' is empty; it needs one subfolder of images per class")
    if len(class_dirs) < 2:
        raise DatasetError(f"'{root}' has only one class folder ('{class_dirs[0]}'); memscan needs at "
                           "least two classes")
    paths, labels, ignored = [], [], []
    for ci, cls in enumerate(class_dirs):
        found = 0
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, "/")
                if _is_image(fn):
                    paths.append(rel)
                    labels.append(ci)
                    found += 1
                else:
                    ignored.append(rel)
        if found == 0:
            raise DatasetError(f"class folder '{root / cls}' has no images ({', '.join(IMAGE_EXTS)}); add "
                               "images or remove the folder")
    order = np.argsort(np.array(paths, dtype=object), kind="stable")
    return SampleTable(paths=[paths[i] for i in order], labels=np.asarray(labels, np.int64)[order],
                       class_names=class_dirs, root=root, source="folder", location=root, ignored=ignored)


def _read_table(loc: Path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    try:
        if loc.suffix.lower() in (".parquet", ".pq"):
            return pq.read_table(loc)
        opts = pacsv.ParseOptions(delimiter="\t" if loc.suffix.lower() == ".tsv" else ",")
        return pacsv.read_csv(loc, parse_options=opts)
    except Exception as e:  # pyarrow raises several types; all mean the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"cannot read manifest '{loc}': {first}; check it is a valid "
                           f"{loc.suffix.lstrip('.')} file") from None


def _pick(columns, wanted, given, what, loc):
    if given is not None:
        if given not in columns:
            raise DatasetError(f"manifest '{loc}' has no column '{given}'; columns are: {', '.join(columns)}")
        return given
    for c in wanted:
        if c in columns:
            return c
    return None


def _index_manifest(loc: Path, path_column, label_column) -> SampleTable:
    import pyarrow as pa
    table = _read_table(loc)
    cols = table.column_names
    label_col = _pick(cols, LABEL_COLUMNS, label_column, "label", loc)
    if label_col is None:
        raise DatasetError(f"manifest '{loc}' has no label column; name one of {', '.join(LABEL_COLUMNS)} "
                           "or pass --label-column")
    bytes_col = None
    for c in BYTES_COLUMNS:
        if c in cols:
            t = table.schema.field(c).type
            if pa.types.is_binary(t) or pa.types.is_large_binary(t) or (
                    pa.types.is_struct(t) and t.get_field_index("bytes") >= 0):
                bytes_col = c
                break
    path_col = _pick(cols, PATH_COLUMNS, path_column, "path", loc)
    if bytes_col is None and path_col is None:
        raise DatasetError(f"manifest '{loc}' has neither a path column ({', '.join(PATH_COLUMNS)}) nor an "
                           "image-bytes column; add one or pass --path-column")

    def _missing(v):  # CSV reads an empty string cell as "" (not null) in a text column
        return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip())

    label_cols = [label_col] + ([c for c in ("label", "label_name") if c != label_col]
                                if "label" in cols and "label_name" in cols else [])
    for c in label_cols:
        values = table.column(c).to_pylist()
        if any(_missing(v) for v in values):
            bad = next(i for i, v in enumerate(values) if _missing(v))
            raise DatasetError(f"manifest '{loc}' row {bad + 2} has no label in column '{c}'; "
                               "fill in every label or drop the row")
    raw_labels = table.column(label_col).to_pylist()
    names = [str(v) for v in raw_labels]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in raw_labels):
        class_names = [str(v) for v in sorted(set(raw_labels))]   # integer labels: 2 before 10
    else:
        class_names = sorted(set(names))
    if "label" in cols and "label_name" in cols:
        # keep the dataset's own class order (label index) with its names
        idx = table.column("label").to_pylist()
        pairs = sorted(set(zip(idx, table.column("label_name").to_pylist())))
        if len({p[0] for p in pairs}) == len(pairs):
            class_names = [str(p[1]) for p in pairs]
            names = [str(v) for v in table.column("label_name").to_pylist()]
    if len(class_names) < 2:
        raise DatasetError(f"manifest '{loc}' has only one class ('{class_names[0]}'); memscan needs at "
                           "least two classes")
    lookup = {c: i for i, c in enumerate(class_names)}
    labels = np.array([lookup[n] for n in names], dtype=np.int64)

    if path_col is not None:
        paths = [str(p) for p in table.column(path_col).to_pylist()]
    else:
        width = len(str(len(names)))
        paths = [f"row-{i:0{width}d}" for i in range(len(names))]
    if len(set(paths)) != len(paths):
        dup = next(p for i, p in enumerate(paths) if p in set(paths[:i]))
        raise DatasetError(f"manifest '{loc}' lists '{dup}' more than once; each image must appear once")

    image_bytes = None
    if bytes_col is not None:
        col = table.column(bytes_col)
        if pa.types.is_struct(col.type):
            col = col.combine_chunks().field("bytes")
        image_bytes = col.to_pylist()
        if any(b is None for b in image_bytes):
            bad = next(i for i, b in enumerate(image_bytes) if b is None)
            raise DatasetError(f"manifest '{loc}' row {bad + 2} has no image bytes in column '{bytes_col}'")
    else:
        base = loc.parent
        missing = [p for p in paths if not (base / p).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"manifest '{loc}' lists '{missing[0]}'{more}, which does not exist under "
                               f"'{base}'; paths must be relative to the manifest's folder")

    order = np.argsort(np.array(paths, dtype=object), kind="stable")
    return SampleTable(
        paths=[paths[i] for i in order], labels=labels[order], class_names=class_names, root=loc.parent,
        source="parquet-bytes" if image_bytes is not None else "manifest", location=loc,
        image_bytes=None if image_bytes is None else [image_bytes[i] for i in order])
