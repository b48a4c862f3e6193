import csv
import json

import numpy as np
import pytest

from memscan.cli import main
from memscan.config import RunConfig
from memscan.eval_noise import aggregate, eval_noise, read_truth
from memscan.errors import DatasetError
from memscan.report import read_report

from helpers import digits_folder, snapshot

# Measured on this recipe (all 1,797-image digits, 20% symmetric noise, 8 px, 8 epochs, seed 0):
# mislabel_score AUROC 0.9994, csg 0.80, 'mislabeled' precision 0.99 / recall 0.80 (BENCHMARKS.md).
# Thresholds leave room for other CPUs' floating-point differences, not for a broken ranking:
# a random ranking gives 0.5 and the weakest single signal (forgetting) gives 0.45.
DIGITS = RunConfig(max_epochs=8, batch_size=64, image_size=8, augment="crop", stop="none")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digits_folder(tmp_path_factory.mktemp("ev") / "digits", per_class=180, classes=10)


@pytest.fixture(scope="module")
def result(digits, tmp_path_factory):
    return eval_noise(digits, DIGITS, rate=0.2, out=tmp_path_factory.mktemp("ev-out") / "e")


def test_detects_flipped_digits(result):
    s = result["scores"]
    assert s["mislabel_score"]["auroc"]["mean"] > 0.98
    assert s["mislabel_score"]["precision_at_k"]["mean"] > 0.9
    assert s["csg"]["auroc"]["mean"] > 0.7
    c = result["category"]
    assert c["precision"]["mean"] > 0.9 and c["recall"]["mean"] > 0.5
    assert result["actual_rate"] == [pytest.approx(0.2, abs=1e-3)]


def test_eval_json_and_truth_written_and_dataset_untouched(result, digits):
    run = result["per_seed"][0]["run"]
    from pathlib import Path
    ev = json.loads((Path(run) / "eval.json").read_text())
    assert ev["scores"]["mislabel_score"]["auroc"] == result["per_seed"][0]["scores"]["mislabel_score"]["auroc"]
    df = read_report(run).to_pandas()
    flipped = read_truth(Path(run) / "truth.csv", df["path"].tolist())
    assert flipped.sum() == round(0.2 * len(df))
    # the report holds the noisy labels; the folder on disk still holds the clean ones
    assert (df["label_name"] != df["path"].str.split("/").str[0]).sum() == flipped.sum()


def test_from_run_with_truth_cli(result, tmp_path, capsys):
    run = result["per_seed"][0]["run"]
    truth = f"{run}/truth.csv"
    assert main(["eval-noise", "--from-run", run, "--truth", truth, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scores"]["mislabel_score"] == result["per_seed"][0]["scores"]["mislabel_score"]
    df = read_report(run).to_pandas()
    # a true_label truth file gives the same mask
    tl = tmp_path / "tl.csv"
    with open(tl, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true_label"])
        for p in df["path"]:
            w.writerow([p, p.split("/")[0]])
    mask = read_truth(tl, df["path"].tolist(), df["label"].to_numpy(), sorted(set(df["label_name"])))
    assert mask.sum() == out["flipped"]


def test_truth_errors(result, tmp_path, capsys):
    run = result["per_seed"][0]["run"]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,flipped\nnot/there.png,1\n")
    assert main(["eval-noise", "--from-run", run, "--truth", str(bad)]) == 2
    assert "has no row for" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(DatasetError, match="'flipped' or 'true_label'"):
        (tmp_path / "x.csv").write_text("path,other\na,1\n")
        read_truth(tmp_path / "x.csv", ["a"])


@pytest.mark.parametrize("argv,match", [
    (["--rate", "0"], "strictly between 0 and 1"),
    (["--rate", "1.5"], "strictly between 0 and 1"),
    (["--seeds", "a,b"], "comma-separated integers"),
    (["--kind", "weird"], "symmetric, pairflip, matrix"),
])
def test_bad_options(digits, tmp_path, capsys, argv, match):
    before = snapshot(digits)
    assert main(["eval-noise", str(digits), "--out", str(tmp_path / "o"), "--max-epochs", "1", *argv]) == 2
    assert match in " ".join(capsys.readouterr().err.split())
    assert snapshot(digits) == before


def test_matrix_kind_errors(digits, tmp_path, capsys):
    m = tmp_path / "m.csv"
    m.write_text("0.5,0.4\n0.5,0.5\n")
    assert main(["eval-noise", str(digits), "--kind", f"matrix:{m}", "--out", str(tmp_path / "o"),
                 "--max-epochs", "1", "--image-size", "8"]) == 2
    assert "10x10" in " ".join(capsys.readouterr().err.split())


def test_aggregate_mean_std():
    per = [{"scores": {"a": {"auroc": 0.8}}, "category": {"precision": 0.5}},
           {"scores": {"a": {"auroc": 0.9}}, "category": {"precision": 0.7}}]
    agg = aggregate(per)
    assert agg["scores"]["a"]["auroc"]["mean"] == pytest.approx(0.85)
    assert agg["scores"]["a"]["auroc"]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert agg["category"]["precision"]["mean"] == pytest.approx(0.6)


def _truth_file(tmp_path, name, paths, row, header="path,flipped", raw=None):
    f = tmp_path / name
    if raw is not None:
        f.write_bytes(raw)
        return f
    f.write_text(header + "\n" + "".join(row(i, p) for i, p in enumerate(paths)))
    return f


TRUTH_CASES = {   # each gave a hang, an internal error (exit 70) or wrong metrics silently (adversarial review)
    "a pipe": ("fifo", "not a regular file"),
    "a short row": (lambda i, p: f"{p}\n" if i == 0 else f"{p},{int(i % 5 == 0)}\n", "row 2 has no flipped"),
    "not true or false": (lambda i, p: f"{p},{'maybe' if i == 3 else int(i % 5 == 0)}\n", "neither 1/true/yes"),
    "a path twice": (lambda i, p: f"{p},{int(i % 5 == 0)}\n" + (f"{p},1\n" if i == 0 else ""), "again"),
    "latin-1": (b"path,flipped\n\xe9,1\n", "is not UTF-8"),
    "a field over 128 KiB": (b"path,flipped\n" + b"a" * 200_000 + b",1\n", "not readable CSV"),
}


@pytest.mark.parametrize("case", sorted(TRUTH_CASES))
def test_hostile_truth_files_fail_in_one_line(result, tmp_path, capsys, case):
    import os
    run = result["per_seed"][0]["run"]
    paths = read_report(run).to_pandas()["path"].tolist()
    spec, match = TRUTH_CASES[case]
    if spec == "fifo":
        f = tmp_path / "t.csv"
        os.mkfifo(f)
    elif isinstance(spec, bytes):
        f = _truth_file(tmp_path, "t.csv", paths, None, raw=spec)
    else:
        f = _truth_file(tmp_path, "t.csv", paths, spec)
    assert main(["eval-noise", "--from-run", run, "--truth", str(f)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert match in err and "Traceback" not in err, err


def test_truth_with_a_byte_order_mark_and_class_range(result, tmp_path):
    run = result["per_seed"][0]["run"]
    df = read_report(run).to_pandas()
    paths = df["path"].tolist()
    bom = _truth_file(tmp_path, "bom.csv", paths, None,
                      raw=b"\xef\xbb\xbf" + ("path,flipped\n" + "".join(f"{p},{int(i % 5 == 0)}\n"
                                                                       for i, p in enumerate(paths))).encode())
    assert read_truth(bom, paths).sum() == len(range(0, len(paths), 5))
    far = _truth_file(tmp_path, "far.csv", paths, lambda i, p: f"{p},99\n", header="path,true_label")
    with pytest.raises(DatasetError, match="not a class index"):
        read_truth(far, paths, df["label"].to_numpy(), sorted(set(df["label_name"])))


@pytest.mark.parametrize("argv,match", [
    (["--rate", "0.9999"], "flips every one"),
    (["--seeds", "3,3"], "repeats a seed"),
    (["--kind", "matrix:FIFO"], "not a regular file"),   # it hung
    (["--kind", "matrix:PERM"], "zero diagonal"),
])
def test_eval_noise_refuses_before_training(digits, tmp_path, capsys, argv, match):
    """These trained a whole run first, then failed (exit 70 or 2), or hung on a pipe; no folder is made now."""
    import os
    os.mkfifo(tmp_path / "fifo.csv")
    k = 10
    (tmp_path / "perm.csv").write_text("\n".join(",".join("1" if j == (i + 1) % k else "0" for j in range(k))
                                                 for i in range(k)) + "\n")
    argv = [a.replace("FIFO", str(tmp_path / "fifo.csv")).replace("PERM", str(tmp_path / "perm.csv")) for a in argv]
    assert main(["eval-noise", str(digits), "--out", str(tmp_path / "o"), "--max-epochs", "1", *argv]) == 2
    assert match in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "o").exists()
