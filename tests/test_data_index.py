import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from memscan.data.index import load_index
from memscan.errors import DatasetError


def png_bytes(color=(255, 0, 0), size=(4, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def write_img(path, color=(255, 0, 0), size=(4, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color, size))
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "ds"
    write_img(root / "cat" / "b.png")
    write_img(root / "cat" / "a.jpg")
    write_img(root / "cat" / "sub" / "deeper" / "c.png")
    write_img(root / "dog" / "z.png", (0, 0, 255))
    write_img(root / "dog" / "inner" / "y.PNG", (0, 0, 255))
    # hidden things are ignored entirely
    write_img(root / "dog" / ".hidden.png")
    write_img(root / "dog" / ".cache" / "x.png")
    write_img(root / ".trash" / "w.png")
    # non-image files are left out but listed
    (root / "cat" / "notes.txt").write_text("hello")
    (root / "dog" / "inner" / "meta.json").write_text("{}")
    return root


# --------------------------------------------------------------------------- folders

def test_folder_classes_nesting_hidden_and_ignored(folder):
    t = load_index(folder)
    assert t.source == "folder"
    assert t.class_names == ["cat", "dog"]
    assert t.paths == ["cat/a.jpg", "cat/b.png", "cat/sub/deeper/c.png", "dog/inner/y.PNG", "dog/z.png"]
    assert t.labels.tolist() == [0, 0, 0, 1, 1]
    assert t.labels.dtype == np.int64
    assert sorted(t.ignored) == ["cat/notes.txt", "dog/inner/meta.json"]
    assert len(t) == 5 and t.num_classes == 2
    assert t.file(2) == folder / "cat" / "sub" / "deeper" / "c.png"
    assert t.read_bytes(0) == (folder / "cat" / "a.jpg").read_bytes()


def test_folder_ids_are_sorted_paths_and_stable(folder):
    a, b = load_index(folder), load_index(folder)
    assert a.paths == sorted(a.paths)
    assert a.paths == b.paths
    assert a.labels.tolist() == b.labels.tolist()
    assert a.fingerprint() == b.fingerprint()


def test_fingerprint_changes_when_file_content_changes(folder):
    t0 = load_index(folder)
    fp0, cfp0 = t0.fingerprint(), t0.content_fingerprint()
    # rewrite one image with different bytes (a different size of image => different byte count)
    write_img(folder / "dog" / "z.png", (0, 255, 0), size=(9, 7))
    t1 = load_index(folder)
    assert t1.paths == t0.paths
    assert t1.content_fingerprint() != cfp0
    assert t1.fingerprint() != fp0


def test_fingerprint_changes_on_same_size_rewrite_with_later_mtime(folder):
    f = folder / "cat" / "b.png"
    cfp0 = load_index(folder).content_fingerprint()
    before = f.stat()
    old = f.read_bytes()
    new = old[:-5] + bytes([old[-5] ^ 0xFF]) + old[-4:]   # same length, one byte different
    assert len(new) == before.st_size and new != old
    f.write_bytes(new)
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # an edit one second later
    assert load_index(folder).content_fingerprint() != cfp0


def test_fingerprint_changes_when_a_file_moves_class(folder):
    fp0 = load_index(folder).fingerprint()
    os.replace(folder / "cat" / "b.png", folder / "dog" / "b.png")
    assert load_index(folder).fingerprint() != fp0


# --------------------------------------------------------------------------- manifests

def test_csv_manifest_relative_paths_and_string_labels(tmp_path):
    base = tmp_path / "m"
    write_img(base / "imgs" / "2.png")
    write_img(base / "imgs" / "1.png")
    write_img(base / "imgs" / "3.png")
    (base / "train.csv").write_text("path,label\nimgs/2.png,zebra\nimgs/1.png,apple\nimgs/3.png,zebra\n")
    t = load_index(base / "train.csv")
    assert t.source == "manifest"
    assert t.root == base
    assert t.paths == ["imgs/1.png", "imgs/2.png", "imgs/3.png"]
    assert t.class_names == ["apple", "zebra"]
    assert t.labels.tolist() == [0, 1, 1]
    assert t.file(0) == base / "imgs" / "1.png"
    assert t.read_bytes(0) == (base / "imgs" / "1.png").read_bytes()


def test_tsv_manifest_with_explicit_columns(tmp_path):
    for n in ("a", "b"):
        write_img(tmp_path / f"{n}.png")
    (tmp_path / "m.tsv").write_text("where\twhat\na.png\tx\nb.png\ty\n")
    t = load_index(tmp_path / "m.tsv", path_column="where", label_column="what")
    assert t.paths == ["a.png", "b.png"] and t.class_names == ["x", "y"]
    with pytest.raises(DatasetError, match="no column 'nope'"):
        load_index(tmp_path / "m.tsv", path_column="nope", label_column="what")


def test_integer_labels_keep_numeric_class_order(tmp_path):
    rows = ["path,label"]
    for i in range(12):
        write_img(tmp_path / f"img{i:02d}.png")
        rows.append(f"img{i:02d}.png,{i}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    t = load_index(tmp_path / "m.csv")
    assert t.class_names == [str(i) for i in range(12)]
    assert t.labels.tolist() == list(range(12))   # class index == the dataset's own label


def test_manifest_fingerprint_changes_with_labels_only(tmp_path):
    write_img(tmp_path / "a.png")
    write_img(tmp_path / "b.png")
    write_img(tmp_path / "c.png")
    m = tmp_path / "m.csv"
    m.write_text("path,label\na.png,x\nb.png,y\nc.png,y\n")
    t0 = load_index(m)
    m.write_text("path,label\na.png,x\nb.png,x\nc.png,y\n")
    t1 = load_index(m)
    assert t1.content_fingerprint() == t0.content_fingerprint()   # same image files
    assert t1.fingerprint() != t0.fingerprint()                   # different labels
    m.write_text("path,label\na.png,p\nb.png,p\nc.png,q\n")          # same grouping, other names
    t2 = load_index(m)
    assert t2.labels.tolist() == t1.labels.tolist()
    assert t2.fingerprint() != t1.fingerprint()


def _hf_struct(images, paths):
    return pa.array([{"bytes": b, "path": p} for b, p in zip(images, paths)],
                    type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))


@pytest.mark.parametrize("style", ["binary", "hf-struct"])
def test_parquet_with_image_bytes(tmp_path, style):
    imgs = [png_bytes((i * 40, 0, 0)) for i in range(5)]
    labels = ["b", "a", "b", "a", "b"]
    col = pa.array(imgs, type=pa.binary()) if style == "binary" else _hf_struct(imgs, [f"{i}.png" for i in range(5)])
    pq.write_table(pa.table({"image": col, "label": labels}), tmp_path / "d.parquet")
    t = load_index(tmp_path / "d.parquet")
    assert t.source == "parquet-bytes"
    assert t.paths == [f"row-{i}" for i in range(5)]
    assert t.class_names == ["a", "b"]
    assert t.labels.tolist() == [1, 0, 1, 0, 1]
    assert [t.read_bytes(i) for i in range(5)] == imgs
    # subset keeps bytes aligned with labels
    s = t.subset(np.array([3, 0]))
    assert s.read_bytes(0) == imgs[3] and s.labels.tolist() == [0, 1]
    assert load_index(tmp_path / "d.parquet").fingerprint() == t.fingerprint()


def test_parquet_bytes_rows_sort_with_padding(tmp_path):
    imgs = [png_bytes((i, 0, 0)) for i in range(12)]
    pq.write_table(pa.table({"image": pa.array(imgs, pa.binary()), "label": [i % 2 for i in range(12)]}),
                   tmp_path / "d.parquet")
    t = load_index(tmp_path / "d.parquet")
    assert t.paths[:3] == ["row-00", "row-01", "row-02"]
    assert [t.read_bytes(i) for i in range(12)] == imgs   # row order preserved


def test_label_and_label_name_keep_dataset_class_order(tmp_path):
    imgs = [png_bytes((i, 0, 0)) for i in range(4)]
    pq.write_table(pa.table({"image": _hf_struct(imgs, ["p"] * 4),
                             "label": [1, 0, 2, 0],
                             "label_name": ["apple", "zebra", "mango", "zebra"]}), tmp_path / "d.parquet")
    t = load_index(tmp_path / "d.parquet")
    assert t.class_names == ["zebra", "apple", "mango"]     # by label index, not alphabetical
    assert t.labels.tolist() == [1, 0, 2, 0]                # equal to the dataset's own label ids


def test_two_labels_sharing_one_name_are_refused_not_merged(tmp_path):
    imgs = [png_bytes((i, 0, 0)) for i in range(4)]
    pq.write_table(pa.table({"image": _hf_struct(imgs, ["p"] * 4), "label": [0, 1, 2, 1],
                             "label_name": ["cat", "cat", "ship", "cat"]}), tmp_path / "d.parquet")
    with pytest.raises(DatasetError, match=r"names the labels 0, 1 all 'cat'.*own label_name"):
        load_index(tmp_path / "d.parquet")
    t = load_index(tmp_path / "d.parquet", label_column="label")     # the user's choice: that column alone
    assert t.class_names == ["0", "1", "2"] and t.labels.tolist() == [0, 1, 2, 1]


def test_an_absurdly_long_class_name_is_refused(tmp_path):
    imgs = [png_bytes((i, 0, 0)) for i in range(4)]
    pq.write_table(pa.table({"image": _hf_struct(imgs, ["p"] * 4),
                             "label_name": ["cat", "x" * 300, "cat", "dog"]}), tmp_path / "d.parquet")
    with pytest.raises(DatasetError, match="class name of 300 characters.*at most 256"):
        load_index(tmp_path / "d.parquet")


# --------------------------------------------------------------------------- bad inputs

def _raises_naming(path, *, match=None, **kw):
    with pytest.raises(DatasetError) as ei:
        load_index(path, **kw)
    msg = str(ei.value)
    assert str(path) in msg, msg
    if match:
        assert match in msg, msg
    return msg


def test_nonexistent_path(tmp_path):
    _raises_naming(tmp_path / "nope", match="does not exist")


def test_image_file_instead_of_folder(tmp_path):
    f = write_img(tmp_path / "one.jpg")
    _raises_naming(f, match="is a file")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _raises_naming(tmp_path / "empty", match="empty")


def test_only_one_class(tmp_path):
    write_img(tmp_path / "ds" / "cat" / "a.png")
    msg = _raises_naming(tmp_path / "ds", match="only one class")
    assert "cat" in msg


def test_class_folder_without_images(tmp_path):
    write_img(tmp_path / "ds" / "cat" / "a.png")
    (tmp_path / "ds" / "dog").mkdir()
    (tmp_path / "ds" / "dog" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="has no images") as ei:
        load_index(tmp_path / "ds")
    assert str(tmp_path / "ds" / "dog") in str(ei.value)


def test_loose_images_without_class_folders(tmp_path):
    write_img(tmp_path / "ds" / "a.png")
    write_img(tmp_path / "ds" / "b.png")
    _raises_naming(tmp_path / "ds", match="no class subfolders")


def test_manifest_paths_that_do_not_exist(tmp_path):
    write_img(tmp_path / "a.png")
    m = tmp_path / "m.csv"
    m.write_text("path,label\na.png,x\nmissing1.png,y\nmissing2.png,y\n")
    msg = _raises_naming(m, match="missing1.png")
    assert "1 more" in msg


@pytest.mark.parametrize("body", ["path,label\na.png,x\nb.png,\nc.png,y\n",     # empty text cell
                                  "path,label\na.png,1\nb.png,\nc.png,2\n"])   # empty numeric cell
def test_manifest_missing_label(tmp_path, body):
    for n in "abc":
        write_img(tmp_path / f"{n}.png")
    m = tmp_path / "m.csv"
    m.write_text(body)
    _raises_naming(m, match="line 3 has no label")   # the header is line 1


def test_manifest_missing_label_index_in_pair(tmp_path):
    imgs = [png_bytes((i, 0, 0)) for i in range(3)]
    pq.write_table(pa.table({"image": pa.array(imgs, pa.binary()), "label": pa.array([0, None, 1], pa.int64()),
                             "label_name": ["a", "b", "b"]}), tmp_path / "d.parquet")
    _raises_naming(tmp_path / "d.parquet", match="row 2 has no label in column 'label'")   # no header in Parquet


@pytest.mark.parametrize("again, message", [("a.png", "'a.png' more than once"),
                                            # one image under two spellings entered the report twice
                                            ("./a.png", "'./a.png' more than once (also as 'a.png')")])
def test_manifest_duplicated_path(tmp_path, again, message):
    write_img(tmp_path / "a.png")
    write_img(tmp_path / "b.png")
    m = tmp_path / "m.csv"
    m.write_text(f"path,label\na.png,x\nb.png,y\n{again},y\n")
    _raises_naming(m, match=message)


def test_manifest_without_rows(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label\n")
    _raises_naming(m, match="has no rows")


@pytest.mark.parametrize("column", ["label", "label_name"])
def test_manifest_with_list_labels(tmp_path, column):
    imgs = [png_bytes((i, 0, 0)) for i in range(3)]
    cols = {"image": pa.array(imgs, pa.binary()), "label": [0, 1, 1], "label_name": ["a", "b", "b"]}
    cols[column] = [[0], [1], [1]] if column == "label" else [["a"], ["b"], ["b"]]
    pq.write_table(pa.table(cols), tmp_path / "d.parquet")
    _raises_naming(tmp_path / "d.parquet", match=f"column '{column}' holds list")


def test_manifest_without_label_column(tmp_path):
    write_img(tmp_path / "a.png")
    m = tmp_path / "m.csv"
    m.write_text("path,colour\na.png,x\n")
    _raises_naming(m, match="no label column")


def test_unreadable_manifest(tmp_path):
    m = tmp_path / "broken.parquet"
    m.write_bytes(b"this is not parquet")
    _raises_naming(m, match="cannot read manifest")
