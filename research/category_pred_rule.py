"""Why does the ``mislabeled`` category find only a quarter of human-like (instance-dependent) errors, and would
"the annealed model predicts another class" do better than confident learning's alternative class? Replays the
rules on finished runs whose paths carry the true class (``<split>/<class>/<file>``, as in ../shared/data), so
benchmark folders without ``truth.csv`` work too (issue 13, item 4; BENCHMARKS.md §13).

    python research/category_pred_rule.py bench-out/inst2/mnist-inst20-500pc/memscan bench-out/anneal-verify/ctest-clean
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from category_rules import late_window  # noqa: E402  (the sibling research script)

from memscan.report import read_frame, read_metadata  # noqa: E402


def replay(run: Path) -> str:
    df, meta = read_frame(run), read_metadata(run)
    flipped = (df["label_name"] != df["path"].str.split("/").str[1]).to_numpy()
    late_margin, late_correct = late_window(run, len(df), meta.stop.mislabel_window[0] - 1)
    loses = (late_margin < 0) & (late_correct == 0)
    cl_differs = ((df["confident_class"] >= 0) & (df["confident_class"] != df["label"])).to_numpy()
    pred_differs = (df["pred"] != df["label"]).to_numpy()
    rules = {"shipped": (df["category"] == "mislabeled").to_numpy(),
             "CL differs & loses": cl_differs & loses,
             "pred differs & loses": pred_differs & loses}
    out = [f"{run}: true {flipped.mean():.3f}"]
    for name, flag in rules.items():
        tp = (flag & flipped).sum()
        est = f" est {flag.mean() / flipped.mean():.2f}x" if flipped.any() else ""
        out.append(f"{name}: {flag.mean():.4f} P {tp / max(flag.sum(), 1):.2f} R {tp / max(flipped.sum(), 1):.2f}{est}")
    out.append(f"flips with CL differing {cl_differs[flipped].mean():.2f}, predicted as another class "
               f"{pred_differs[flipped].mean():.2f}" if flipped.any() else "no flips")
    return "\n  ".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    for run in ap.parse_args().runs:
        print(replay(run))


if __name__ == "__main__":
    main()
