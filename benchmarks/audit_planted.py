"""Precision and recall of memscan's image issues, duplicates and leaks on ``benchmarks/planted.py``'s cases.

    python benchmarks/planted.py ../shared/data/cifar10 bench-out/planted --per-class 500
    memscan run bench-out/planted/train.parquet --test bench-out/planted/test.parquet --out bench-out/planted/run
    python benchmarks/audit_planted.py bench-out/planted bench-out/planted/run

Duplicates: a planted copy is found when it is in the same duplicate group as its original; an
unplanted image in a group is a false alarm only if it is not a real CIFAR-10 near duplicate, which
this script cannot know: it counts them apart ("other grouped images"). Conflicting copies: found when
the group is marked conflicting and the copy (which carries the wrong label) is its suspect. Leaks: a
planted test copy found with its own original. Image issues: recall per planted degradation, and the
share of unplanted images flagged.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from memscan.report import read_frame, read_metadata
from memscan.run_folder import RunFolder

EXPECTED = {"dark": "dark", "bright": "bright", "blurry": "blurry", "blank": "low_information",
            "grayscale": "grayscale"}


def evaluate(planted: Path, run: Path) -> dict:
    truth = json.loads((planted / "truth.json").read_text())
    df = read_frame(run).set_index("path")
    meta = read_metadata(run)
    group = df["duplicate_group"]
    dup = defaultdict(lambda: [0, 0])
    conflict, conflict_grouped = [0, 0], 0
    planted_paths = set()
    for r in truth["duplicates"]:
        planted_paths |= {r["original"], r["copy"]}
        g0, g1 = group[r["original"]], group[r["copy"]]
        dup[r["transform"]][0] += int(g0 >= 0 and g0 == g1)
        dup[r["transform"]][1] += 1
        if r["conflict"]:
            conflict_grouped += int(g0 >= 0 and g0 == g1)
            conflict[0] += int(g0 >= 0 and g0 == g1 and bool(df.at[r["copy"], "duplicate_suspect"])
                               and not bool(df.at[r["original"], "duplicate_suspect"]))
            conflict[1] += 1
    others = int(((group >= 0) & ~df.index.isin(planted_paths)).sum())
    leaks = pq.read_table(RunFolder(run).leaks).to_pandas() if RunFolder(run).leaks.exists() else None
    found_pairs = set() if leaks is None else set(zip(leaks["test_path"], leaks["train_path"]))
    leak = defaultdict(lambda: [0, 0])
    for r in truth["leaks"]:
        leak[r["transform"]][0] += int((r["test"], r["train"]) in found_pairs)
        leak[r["transform"]][1] += 1
    planted_tests = {r["test"] for r in truth["leaks"]}
    other_leaks = 0 if leaks is None else int((~leaks["test_path"].isin(planted_tests)).sum())
    issue, precision = {}, {}
    degraded = {r["path"]: r["kind"] for r in truth["degraded"]}
    for kind, name in EXPECTED.items():
        paths = [p for p, k in degraded.items() if k == kind]
        issue[kind] = [int(sum(name in df.at[p, "image_issue"].split(",") for p in paths)), len(paths)]
        flagged = int(df["image_issue"].str.split(",").apply(lambda s, n=name: n in s).sum())
        precision[kind] = round(issue[kind][0] / flagged, 3) if flagged else None
    clean = df[~df.index.isin(set(degraded) | planted_paths)]
    ratio = lambda v: {"found": v[0], "planted": v[1], "recall": round(v[0] / v[1], 3) if v[1] else None}
    return {
        "duplicates": {k: ratio(v) for k, v in sorted(dup.items())},
        "duplicates_all": ratio([sum(v[0] for v in dup.values()), sum(v[1] for v in dup.values())]),
        "conflicting_copies_singled_out": ratio(conflict),
        "conflicting_copies_grouped": conflict_grouped,
        "duplicates_precision_lower_bound": round(2 * sum(v[0] for v in dup.values())
                                                  / max(1, 2 * sum(v[0] for v in dup.values()) + others), 4),
        "other_grouped_images": others, "images": len(df),
        "leaks": {k: ratio(v) for k, v in sorted(leak.items())},
        "leaks_all": ratio([sum(v[0] for v in leak.values()), sum(v[1] for v in leak.values())]),
        "other_leaks": other_leaks, "test_images": None if leaks is None else meta.audit.get("test", {}).get("n"),
        "image_issues": {k: ratio(v) for k, v in issue.items()},
        "image_issue_precision": precision,   # unplanted images with the issue count as false alarms
        "unplanted_flagged": {"share": round(float((clean["image_issue"] != "").mean()), 4),
                              "by_issue": {k: int(clean["image_issue"].str.contains(k).sum()) for k in
                                           sorted({i for s in clean["image_issue"] for i in s.split(",") if i})}},
        "audit_s": meta.timings.get("audit_s"), "total_s": meta.timings.get("total_s"),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("planted", type=Path)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here too")
    a = ap.parse_args(argv)
    res = evaluate(a.planted, a.run)
    text = json.dumps(res, indent=1)
    if a.out:
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
