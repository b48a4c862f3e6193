"""Beyond labels: a run's image issues, duplicate groups and leaks into a test set, as report columns.

``audit_images`` reads the decoded training images once more (no decoding: the uint8 array the run
trained on) and returns the report's image and duplicate columns with a summary for the metadata;
``audit_leaks`` compares a test set's decoded images with the training images. The rules live in
``image_issues`` and ``duplicates``; this module only joins them to the run's samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .duplicates import find_duplicates, find_leaks, label_conflicts, thumbnails
from .image_issues import ISSUES, PROPERTY_COLUMNS, find_issues, issue_names, properties

COLUMNS = {
    "brightness": "mean luma of the decoded image, 0-1; LOWER = darker",
    "contrast": "standard deviation of the luma, 0-1; LOWER = flatter",
    "sharpness": "variance of the luma's Laplacian at the training size; LOWER = blurrier",
    "entropy": "bits of the luma histogram, 0-8; LOWER = less information (blank)",
    "colourfulness": "mean of max - min channel per pixel, 0-1; 0 = grayscale",
    "width": "the image file's own width in pixels (before resizing)",
    "height": "the image file's own height in pixels",
    "image_issue": "comma-separated issues: " + ", ".join(ISSUES) + " ('' when none; rules in README 'Duplicates, "
                   "leaks and image issues')",
    "duplicate_group": "group of exact or near duplicates (same number, same group); -1 when none",
    "duplicate_kind": "exact (same decoded pixels as another image) | near (thumbnail correlation at or above the "
                      "set's threshold, audit.near_threshold in the metadata) | ''",
    "duplicate_similarity": "correlation of the 16x16 thumbnails with its closest duplicate (1 for exact); NaN if none",
    "duplicate_of": "path of its closest duplicate ('' when none)",
    "duplicate_conflict": "its duplicate group carries more than one label",
    "duplicate_suspect": "in a conflicting group, its label differs from that of the member the training fits best: "
                         "likely the wrong one",
    "test_duplicates": "test images (run --test) that duplicate this training image; 0 without --test",
}


@dataclass
class SearchIndex:
    """What a leak search needs of the training images, kept from the duplicate search."""
    thumbs: np.ndarray
    hashes: np.ndarray
    threshold: float


def audit_images(images: np.ndarray, sizes, labels: np.ndarray, paths: list[str],
                 suspicion: np.ndarray) -> tuple[dict, dict, SearchIndex]:
    """(report columns, summary, search index). ``suspicion``: higher = label more doubtful
    (``mislabel_score``): a conflicting group's members whose label differs from its most trusted
    member's are its ``duplicate_suspect``s."""
    props = properties(images, sizes)
    flags = find_issues(props)
    thumbs = thumbnails(images)
    dup = find_duplicates(images, descriptors=thumbs)
    conflict, suspect = label_conflicts(dup.group, np.asarray(labels), np.asarray(suspicion))
    paths_arr = np.asarray(paths, dtype=object)
    cols = {k: props[k] for k in PROPERTY_COLUMNS}   # width/height: int32 already
    cols.update({
        "image_issue": issue_names(flags), "duplicate_group": dup.group, "duplicate_kind": dup.kind,
        "duplicate_similarity": dup.similarity,
        "duplicate_of": np.where(dup.partner >= 0, paths_arr[np.maximum(dup.partner, 0)], ""),
        "duplicate_conflict": conflict, "duplicate_suspect": suspect,
        "test_duplicates": np.zeros(len(images), dtype=np.int32),
    })
    summary = {
        "image_issues": {k: int(v.sum()) for k, v in flags.items()},
        "images_with_issues": int((cols["image_issue"] != "").sum()),
        "duplicate_groups": dup.groups, "duplicate_images": int((dup.group >= 0).sum()),
        "redundant_images": dup.redundant, "exact_duplicates": int((dup.kind == "exact").sum()),
        "conflicting_groups": int(len(np.unique(dup.group[conflict]))), "duplicate_suspects": int(suspect.sum()),
        "near_threshold": dup.threshold,
    }
    return cols, summary, SearchIndex(thumbs, dup.hashes, dup.threshold)


LEAK_FIELDS = ("test_path", "test_label", "train_path", "train_label", "same_label", "kind", "similarity")


def read_leaks(path):
    """``leaks.parquet`` as a DataFrame, checked: a damaged or foreign file is a one-line ``ReportError``."""
    import pyarrow.parquet as pq
    from .errors import ReportError
    try:
        t = pq.read_table(path)
    except Exception as e:
        raise ReportError(f"'{path}' is not a readable Parquet file ({type(e).__name__}); re-run 'memscan run "
                          "DATASET --test TEST_SET' to write it again") from None
    missing = [c for c in LEAK_FIELDS if c not in t.column_names]
    if missing:
        raise ReportError(f"'{path}' lacks the column(s) {', '.join(missing)}; it was not written by 'memscan run "
                          "--test': re-run it")
    df = t.select(list(LEAK_FIELDS)).to_pandas()
    try:
        df["same_label"] = df["same_label"].astype(bool)
        df["similarity"] = df["similarity"].astype(float)
    except (TypeError, ValueError):
        raise ReportError(f"'{path}' has damaged columns same_label/similarity; re-run 'memscan run --test'") from None
    for c in ("test_path", "test_label", "train_path", "train_label", "kind"):
        df[c] = df[c].astype(str)
    return df


def audit_leaks(test_table, test_images: np.ndarray, train_paths: list[str], train_names: list[str],
                train_labels: np.ndarray, train_images: np.ndarray, train_index: SearchIndex):
    """(pairs as a pyarrow Table, count of test images per training image). A pair: a test image and its
    most similar training image, when that is an exact or near duplicate."""
    lk = find_leaks(test_images, train_images, base_descriptors=train_index.thumbs, base_hashes=train_index.hashes,
                    threshold=train_index.threshold)
    test_names = [test_table.class_names[int(v)] for v in np.asarray(test_table.labels)[lk.query]]
    train_label = [train_names[int(v)] for v in np.asarray(train_labels)[lk.base]]
    pairs = pa.table({
        "test_path": pa.array([test_table.paths[int(i)] for i in lk.query], pa.string()),
        "test_label": pa.array(test_names, pa.string()),
        "train_path": pa.array([train_paths[int(i)] for i in lk.base], pa.string()),
        "train_label": pa.array(train_label, pa.string()),
        "same_label": pa.array([a == b for a, b in zip(test_names, train_label)], pa.bool_()),
        "kind": pa.array(lk.kind.tolist(), pa.string()),
        "similarity": pa.array(lk.similarity, pa.float32()),
    })
    per_train = np.bincount(lk.base, minlength=len(train_paths)).astype(np.int32)
    return pairs.sort_by([("similarity", "descending"), ("test_path", "ascending")]), per_train
