"""The sample index: which images exist, their labels, and stable sample ids.

Three inputs give one ``SampleTable``:

* an image folder with one subfolder per class (any nesting inside a class folder);
* a CSV/TSV/Parquet manifest with a path column and a label column (paths relative to its folder, or absolute);
* a Parquet file holding each image's bytes in a column (HF-style ``image`` struct or binary).

Sample ids are positions in the sorted list of relative paths, so the same dataset always gives
the same ids and order. Nothing here writes anything.

Hostile folders are indexed without hanging or crashing: links are followed but no folder is
visited twice (symlink loops), and entries that cannot be images (broken links, FIFOs, devices,
names that are not UTF-8, paths over the system's length limit) are listed in ``ignored`` with
the reason. Image files are only ever opened if they are regular files of bounded size.
"""
from __future__ import annotations

import codecs
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
MANIFEST_EXTS = (".csv", ".tsv", ".parquet", ".pq")
PATH_COLUMNS = ("path", "filepath", "file", "filename", "image_path", "img_path")
LABEL_COLUMNS = ("label_name", "label", "class", "class_name", "target", "category")
BYTES_COLUMNS = ("image", "img", "bytes", "image_bytes")
MAX_FILE_BYTES = 512 * 2 ** 20   # larger image files are skipped as unreadable, never read into memory
PATH_MAX, NAME_MAX = 4096, 255   # Linux's limits: a longer path cannot be opened, so it is listed, not indexed
_SPECIAL = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
            (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder"))


def _kind(st: os.stat_result) -> str:
    return next((name for test, name in _SPECIAL if test(st.st_mode)), "special file")


def _check_regular(st: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise DatasetError(f"not a regular file ({_kind(st)})")
    if st.st_size > max_bytes:
        raise DatasetError(f"file is {st.st_size / 2 ** 20:.0f} MiB, over the {max_bytes / 2 ** 20:.0f} MiB "
                           "limit for one image")


def open_regular(path, max_bytes: int | None = None):
    """``path`` opened for binary reading if it is a regular file of at most ``max_bytes`` (default
    ``MAX_FILE_BYTES``); else ``DatasetError`` saying what it is.

    A FIFO would block a read forever and a link to /dev/zero would fill the memory, so the file is
    checked before it is opened (opening some devices has effects) and again once open (it may have
    been swapped meanwhile); O_NONBLOCK keeps even a swapped-in FIFO from blocking the open.
    """
    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    _check_regular(os.stat(path), max_bytes)
    f = os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)), "rb")
    try:
        _check_regular(os.fstat(f.fileno()), max_bytes)
    except BaseException:
        f.close()
        raise
    return f


def read_regular(path, max_bytes: int | None = None) -> bytes:
    """The bytes of ``path``, read through ``open_regular``."""
    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    with open_regular(path, max_bytes) as f:
        data = f.read(max_bytes + 1)   # a file that grows (or lies about its size) still stops here
    if len(data) > max_bytes:
        raise DatasetError(f"file is over the {max_bytes / 2 ** 20:.0f} MiB limit for one image")
    return data


def shown(name: str) -> str:
    """A name as text that always encodes: bytes that are not UTF-8 shown as \\xNN escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")   # os.listdir turns bytes that are not UTF-8 into lone surrogates
        return True
    except UnicodeEncodeError:
        return False


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
    ignored: list[str] = field(default_factory=list)   # non-image files left out; "path (reason)" if not plain
    unreadable: list[dict] = field(default_factory=list)   # image names left out: [{"path", "error"}] (a FIFO, a
                                                           # dangling link, a name that is not UTF-8, ...)

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
        return read_regular(self.file(i))

    def subset(self, keep: np.ndarray) -> "SampleTable":
        keep = np.asarray(keep, dtype=np.int64)
        return SampleTable(
            paths=[self.paths[i] for i in keep], labels=self.labels[keep], class_names=self.class_names,
            root=self.root, source=self.source, location=self.location,
            image_bytes=None if self.image_bytes is None else [self.image_bytes[i] for i in keep],
            ignored=self.ignored, unreadable=self.unreadable)

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
                try:
                    st = (self.root / p).stat()
                    h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\0".encode())
                except OSError:   # removed since it was indexed: decoding will skip it and say why
                    h.update(f"{p}|gone\0".encode())
        return h.hexdigest()[:20]

    def fingerprint(self) -> str:
        """Content fingerprint plus labels and class names: identifies the labelled dataset."""
        h = hashlib.sha256(self.content_fingerprint().encode())
        h.update("\0".join(self.class_names).encode())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:20]


def load_index(location, *, path_column: str | None = None, label_column: str | None = None,
               encoding: str | None = None) -> SampleTable:
    """Index an image folder or a manifest. Raises ``DatasetError`` with the fix on bad input.

    ``encoding``: the text encoding of a CSV/TSV manifest (default UTF-8; Parquet is always UTF-8).
    """
    loc = Path(location).expanduser()
    if not loc.exists():
        raise DatasetError(f"dataset path '{loc}' does not exist; pass an image folder (one subfolder "
                           "per class) or a .csv/.parquet manifest")
    if loc.is_dir():
        return _index_folder(loc)
    if not loc.is_file():   # reading a FIFO would block forever, a device never end
        raise DatasetError(f"dataset path '{loc}' is not a regular file or folder ({_kind(loc.stat())}); pass "
                           "an image folder or a .csv/.parquet manifest")
    if loc.suffix.lower() in MANIFEST_EXTS:
        return _index_manifest(loc, path_column, label_column, encoding)
    raise DatasetError(f"'{loc}' is a file, not a dataset; pass the folder that holds one subfolder per "
                       "class, or a .csv/.parquet manifest")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _class_dirs(root: Path) -> list[str]:
    try:
        entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    except PermissionError:
        raise DatasetError(f"cannot read folder '{root}': permission denied; fix its permissions") from None
    class_dirs = [e for e in entries if (root / e).is_dir()]
    bad = next((e for e in class_dirs if not _is_utf8(e)), None)
    if bad is not None:   # a class cannot be dropped quietly, and its name must go into reports
        raise DatasetError(f"class folder '{shown(bad)}' in '{root}' has a name that is not UTF-8; rename "
                           "it (e.g. convmv -f latin1 -t utf8 -r --notest)")
    if not class_dirs:
        if any((root / e).is_file() and _is_image(e) for e in entries):
            raise DatasetError(f"'{root}' holds images but no class subfolders; put each class's images "
                               "in a subfolder named after the class")
        raise DatasetError(f"'{root}' is empty; it needs one subfolder of images per class")
    if len(class_dirs) < 2:
        raise DatasetError(f"'{root}' has only one class folder ('{class_dirs[0]}'); memscan needs at "
                           "least two classes")
    return class_dirs


def _dir_id(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _name_problem(root_bytes: int, rel: str, name: str) -> str | None:
    if not _is_utf8(name):
        # skipped, not indexed escaped: an escaped name would not open, and a raw one breaks UTF-8 outputs
        return "name is not UTF-8; rename it"
    if len(name.encode()) > NAME_MAX or root_bytes + 1 + len(rel.encode()) >= PATH_MAX:
        return f"path longer than the system limit ({PATH_MAX} bytes); move it higher up"
    return None


def _folder_id(entry: os.DirEntry) -> tuple[int, int] | None:
    """(device, inode) of a folder entry, following symlinks; None if it is not a folder."""
    try:
        return _dir_id(entry.path) if entry.is_dir() else None
    except OSError:   # a symlink to itself (ELOOP), or removed meanwhile
        return None


def _file_problem(entry: os.DirEntry) -> str | None:
    """Why an entry that is not a folder cannot be an image file, or None if it is a regular file."""
    try:
        if entry.is_file():
            return None
        st = entry.stat()
    except FileNotFoundError:
        return "broken symlink"
    except OSError as e:
        return f"cannot stat: {e.strerror or e}"
    return f"not a regular file ({_kind(st)})"


def _walk_class(root: Path, cls: str, seen: set, ignored: list[str], unreadable: list[dict]) -> list[str]:
    """Relative paths of the images in one class folder (any nesting, following symlinks).

    Each folder is visited once, by (device, inode): a link to a parent (a loop) or to a folder
    already indexed is listed in ``ignored`` instead of walked again.
    """
    found, stack, root_bytes = [], [cls], len(os.fsencode(root))
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(root / rel_dir) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as e:
            ignored.append(f"{shown(rel_dir)} (cannot list folder: {e.strerror or e})")
            continue
        for e in entries:
            rel = f"{rel_dir}/{e.name}"
            problem = _name_problem(root_bytes, rel, e.name)
            key = None if problem else _folder_id(e)
            if key in seen:
                problem = "folder already indexed: a symlink loop or a second link to it"
            elif key is not None:
                seen.add(key)
                stack.append(rel)
                continue
            problem = problem or _file_problem(e)
            if problem and _is_image(e.name):   # looks like a sample: listed with the skipped images
                unreadable.append({"path": shown(rel), "error": problem})
            elif problem:
                ignored.append(f"{shown(rel)} ({problem})")
            elif _is_image(e.name):
                found.append(rel)
            else:
                ignored.append(rel)
    return found


def _index_folder(root: Path) -> SampleTable:
    class_dirs = _class_dirs(root)
    seen = {_dir_id(root)} | {_dir_id(root / c) for c in class_dirs}
    paths, labels, ignored, unreadable = [], [], [], []
    for ci, cls in enumerate(class_dirs):
        found = _walk_class(root, cls, seen, ignored, unreadable)
        if not found:
            raise DatasetError(f"class folder '{root / cls}' has no images ({', '.join(IMAGE_EXTS)}); add "
                               "images or remove the folder")
        paths += found
        labels += [ci] * len(found)
    order = np.argsort(np.array(paths, dtype=object), kind="stable")
    return SampleTable(paths=[paths[i] for i in order], labels=np.asarray(labels, np.int64)[order],
                       class_names=class_dirs, root=root, source="folder", location=root, ignored=ignored,
                       unreadable=unreadable)


def _is_parquet(loc: Path) -> bool:
    return loc.suffix.lower() in (".parquet", ".pq")


def _where(loc: Path, i: int) -> str:
    """Where row ``i`` (0-based) of a manifest is: a line of a CSV (after its header), a row of Parquet."""
    return f"row {i + 1}" if _is_parquet(loc) else f"line {i + 2}"


def _read_table(loc: Path, encoding: str | None):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ConfigError(f"--encoding {encoding!r} is not a known text encoding; use e.g. utf-8, latin-1, "
                              "cp1252") from None
    csv = not _is_parquet(loc)
    if csv and encoding is None:
        with open(loc, "rb") as f:   # pyarrow cannot even report column names that are not UTF-8
            _check_utf8(loc, [(1, f.readline())])
    try:
        if not csv:
            return pq.read_table(loc)
        opts = pacsv.ParseOptions(delimiter="\t" if loc.suffix.lower() == ".tsv" else ",")
        table = pacsv.read_csv(loc, parse_options=opts, read_options=pacsv.ReadOptions(encoding=encoding or "utf8"))
    except Exception as e:  # pyarrow raises several types; all mean the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"cannot read manifest '{loc}': {first}; check it is a valid "
                           f"{loc.suffix.lstrip('.')} file") from None
    if encoding is None:   # cells that are not UTF-8 come back as binary columns: "b'caf\\xe9'" as a class
        import pyarrow as pa
        _check_utf8(loc, sorted((i + 2, v) for c in table.columns if pa.types.is_binary(c.type)
                                for i, v in enumerate(c.to_pylist()) if v is not None))
    return table


def _check_utf8(loc: Path, lines) -> None:
    """Raise naming the first byte that is not UTF-8 in (line number, bytes) pairs."""
    for line, raw in lines:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DatasetError(f"manifest '{loc}' is not UTF-8 (byte 0x{raw[e.start]:02x} on line {line}); "
                               "pass --encoding latin-1 (or the file's encoding)") from None


def _pick(columns, wanted, given, what, loc):
    if given is not None:
        if given not in columns:
            raise DatasetError(f"manifest '{loc}' has no column '{given}'; columns are: {', '.join(columns)}")
        return given
    for c in wanted:
        if c in columns:
            return c
    return None


def _index_manifest(loc: Path, path_column, label_column, encoding) -> SampleTable:
    table = _read_table(loc, encoding)
    cols = table.column_names
    label_col = _pick(cols, LABEL_COLUMNS, label_column, "label", loc)
    if label_col is None:
        raise DatasetError(f"manifest '{loc}' has no label column; name one of {', '.join(LABEL_COLUMNS)} "
                           "or pass --label-column")
    bytes_col = _bytes_column(table)
    path_col = _pick(cols, PATH_COLUMNS, path_column, "path", loc)
    if bytes_col is None and path_col is None:
        raise DatasetError(f"manifest '{loc}' has neither a path column ({', '.join(PATH_COLUMNS)}) nor an "
                           "image-bytes column; add one or pass --path-column")
    if table.num_rows == 0:
        raise DatasetError(f"manifest '{loc}' has no rows; list one image a row, with its label")
    labels, class_names = _manifest_labels(table, label_col, loc, explicit=label_column is not None)
    paths = _manifest_paths(table, path_col, loc)
    if bytes_col is not None:
        image_bytes = _manifest_bytes(table, bytes_col, loc)
    else:
        image_bytes = None
        base = loc.parent
        # os.path.exists: Path.exists raises on a name over NAME_MAX; a FIFO or device is skipped (and said) later
        missing = [p for p in paths if not os.path.exists(base / p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"manifest '{loc}' lists '{missing[0]}'{more}, which does not exist under "
                               f"'{base}'; paths must be relative to the manifest's folder, or absolute")
    order = np.argsort(np.array(paths, dtype=object), kind="stable")
    return SampleTable(
        paths=[paths[i] for i in order], labels=labels[order], class_names=class_names, root=loc.parent,
        source="parquet-bytes" if image_bytes is not None else "manifest", location=loc,
        image_bytes=None if image_bytes is None else [image_bytes[i] for i in order])


def _bytes_column(table) -> str | None:
    """The first of BYTES_COLUMNS that holds binary cells (or Hugging Face's {bytes, path} structs)."""
    import pyarrow as pa
    for c in BYTES_COLUMNS:
        if c in table.column_names:
            t = table.schema.field(c).type
            if pa.types.is_binary(t) or pa.types.is_large_binary(t) or (
                    pa.types.is_struct(t) and t.get_field_index("bytes") >= 0):
                return c
    return None


def _missing(v) -> bool:
    """An absent cell: null, NaN, or a blank string (CSV reads an empty text cell as "", not null)."""
    return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip())


MAX_CLASS_NAME_CHARS = 256   # a class name, not a document: a 10-MB name made every plot and page hang


def _manifest_labels(table, label_col: str, loc: Path, explicit: bool = False) -> tuple[np.ndarray, list[str]]:
    """Label indices and class names. Integer labels sort numerically (2 before 10); a manifest with both
    ``label`` and ``label_name`` keeps the dataset's own class order (the index) with its names, unless two
    labels share a name: refused, or with an ``explicit`` --label-column, that column alone decides."""
    import pyarrow as pa
    cols = table.column_names
    both = "label" in cols and "label_name" in cols
    for c in [label_col] + ([c for c in ("label", "label_name") if c != label_col] if both else []):
        t = table.schema.field(c).type
        if pa.types.is_nested(t):
            raise DatasetError(f"manifest '{loc}' column '{c}' holds {t}; labels must be text or whole numbers")
        values = table.column(c).to_pylist()
        bad = next((i for i, v in enumerate(values) if _missing(v)), None)
        if bad is not None:
            raise DatasetError(f"manifest '{loc}' {_where(loc, bad)} has no label in column '{c}'; "
                               "fill in every label or drop the row")
    raw_labels = table.column(label_col).to_pylist()
    names = [str(v) for v in raw_labels]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in raw_labels):
        class_names = [str(v) for v in sorted(set(raw_labels))]
    else:
        class_names = sorted(set(names))
    if both:
        pairs = sorted(set(zip(table.column("label").to_pylist(), table.column("label_name").to_pylist())))
        if len({p[0] for p in pairs}) == len(pairs) and _one_name_per_label(pairs, loc, refuse=not explicit):
            class_names = [str(p[1]) for p in pairs]
            names = [str(v) for v in table.column("label_name").to_pylist()]
    if len(class_names) < 2:
        raise DatasetError(f"manifest '{loc}' has only one class ('{class_names[0]}'); memscan needs at "
                           "least two classes")
    long = next((c for c in class_names if len(c) > MAX_CLASS_NAME_CHARS), None)
    if long is not None:
        from ..text import printable
        raise DatasetError(f"manifest '{loc}' has a class name of {len(long):,} characters ('{printable(long[:40])}...'); "
                           f"class names are at most {MAX_CLASS_NAME_CHARS} characters: shorten it")
    lookup = {c: i for i, c in enumerate(class_names)}
    return np.array([lookup[n] for n in names], dtype=np.int64), class_names


def _one_name_per_label(pairs, loc: Path, *, refuse: bool) -> bool:
    """True when every label has its own label_name. Two labels sharing one would merge their classes (and a
    relabel could not be undone): refused with ``refuse``, else False (the chosen label column decides)."""
    from ..text import printable
    labels_of: dict[str, list] = {}
    for label, name in pairs:
        labels_of.setdefault(str(name), []).append(label)
    shared = sorted((n, v) for n, v in labels_of.items() if len(v) > 1)
    if shared and refuse:
        name, labels = shared[0]
        raise DatasetError(f"manifest '{loc}' names the labels {', '.join(map(str, labels))} all "
                           f"'{printable(name)}'; each label needs its own label_name: rename them, or pass "
                           "--label-column to use one of the columns label and label_name alone")
    return not shared


def _manifest_paths(table, path_col: str | None, loc: Path) -> list[str]:
    """Each row's path (``row-NNNN`` when the images are bytes without one); refuses one image listed twice,
    also under two spellings ("a/x.png", "./a/x.png", "a//x.png")."""
    if path_col is None:
        width = len(str(table.num_rows))
        return [f"row-{i:0{width}d}" for i in range(table.num_rows)]
    paths = [str(p) for p in table.column(path_col).to_pylist()]
    seen: dict[str, str] = {}
    for p in paths:
        q = os.path.normpath(p)
        if q in seen:
            also = "" if seen[q] == p else f" (also as '{seen[q]}')"
            raise DatasetError(f"manifest '{loc}' lists '{p}' more than once{also}; each image must appear once")
        seen[q] = p
    return paths


def _manifest_bytes(table, bytes_col: str, loc: Path) -> list[bytes]:
    import pyarrow as pa
    col = table.column(bytes_col)
    if pa.types.is_struct(col.type):
        col = col.combine_chunks().field("bytes")
    image_bytes = col.to_pylist()
    bad = next((i for i, b in enumerate(image_bytes) if b is None), None)
    if bad is not None:
        raise DatasetError(f"manifest '{loc}' {_where(loc, bad)} has no image bytes in column '{bytes_col}'")
    return image_bytes
