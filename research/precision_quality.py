"""Detection quality with and without channels_last and bf16 autocast (same data, seed, epochs).

    python research/precision_quality.py --per-class 60 --epochs 8
Uses scikit-learn's digits (no download) with 20% symmetric noise; prints AUROC of mislabel_score and csg
and the wall time per variant.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import digits_folder
from memscan.config import RunConfig
from memscan.eval_noise import eval_noise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=8)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    data = digits_folder(tmp / "digits", per_class=a.per_class, classes=10)
    out = {}
    for name, cl, prec in (("fp32", False, "fp32"), ("fp32 channels_last", True, "fp32"),
                           ("bf16 channels_last", True, "bf16")):
        cfg = RunConfig(max_epochs=a.epochs, batch_size=64, image_size=8, augment="crop", stop="none",
                        channels_last=cl, precision=prec)
        t = time.perf_counter()
        r = eval_noise(data, cfg, rate=0.2, out=tmp / name.replace(" ", "-"))
        out[name] = {"seconds": round(time.perf_counter() - t, 1),
                     "mislabel_auroc": round(r["scores"]["mislabel_score"]["auroc"]["mean"], 4),
                     "csg_auroc": round(r["scores"]["csg"]["auroc"]["mean"], 4)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
