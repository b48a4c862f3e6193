import json
import subprocess
import sys

import pytest
from PIL import Image

from memscan.cli import main

from helpers import digits_folder, snapshot

FAST = ["--max-epochs", "2", "--batch-size", "32", "--image-size", "8", "--augment", "crop", "--min-epochs", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return digits_folder(tmp_path_factory.mktemp("cli") / "digits", per_class=20, classes=3)


def test_run_json_summary(dataset, tmp_path, capsys):
    assert main(["run", str(dataset), "--out", str(tmp_path / "r"), "--json", *FAST]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 60 and s["epochs_trained"] == 2 and len(s["top"]) == 10
    assert sum(s["categories"].values()) == 60


def test_run_table_output(dataset, tmp_path, capsys):
    assert main(["run", str(dataset), "--out", str(tmp_path / "r"), "-q", *FAST]) == 0
    out = capsys.readouterr().out
    assert "top 10 suspects" in out and "stopped after 2 epochs" in out


def one_line_error(capsys, argv, code=2, match=""):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    text = " ".join(err.split())
    assert "error" in text.lower() and match in text, text
    return text


def test_bad_inputs_exit_nonzero_with_one_line(tmp_path, capsys, dataset):
    one_line_error(capsys, ["run", str(tmp_path / "missing")], match="does not exist")
    f = tmp_path / "a.jpg"
    Image.new("RGB", (4, 4)).save(f)
    one_line_error(capsys, ["run", str(f)], match="is a file")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["run", str(tmp_path / "empty")], match="is empty")
    one = tmp_path / "one" / "cat"
    one.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(one / "x.png")
    one_line_error(capsys, ["run", str(tmp_path / "one")], match="only one class")
    (tmp_path / "one" / "dog").mkdir()
    one_line_error(capsys, ["run", str(tmp_path / "one")], match="has no images")
    one_line_error(capsys, ["run", str(dataset), "--optimizer", "adam"], match="sgd, adamw")
    one_line_error(capsys, ["run", str(dataset), "--lr", "-1"], match="lr=-1")
    one_line_error(capsys, ["run"], match="--demo")
    out = tmp_path / "exists"
    out.mkdir()
    (out / "run.json").write_text("{}")
    one_line_error(capsys, ["run", str(dataset), "--out", str(out)], match="--overwrite")


def test_manifest_errors(tmp_path, capsys, dataset):
    m = tmp_path / "m.csv"
    m.write_text("path,label\nnope.png,cat\nnope2.png,dog\n")
    one_line_error(capsys, ["run", str(m)], match="does not exist")
    m.write_text("path,label\nx.png,\ny.png,dog\n")
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "y.png").write_bytes(b"")
    one_line_error(capsys, ["run", str(m)], match="no label")


def test_corrupt_images_skipped_or_strict(tmp_path, capsys, dataset):
    import shutil
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    bad = ds / "c0" / "zz-broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    before = snapshot(ds)
    assert main(["run", str(ds), "--out", str(tmp_path / "r"), "--json", *FAST]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 60 and s["skipped"][0]["path"] == "c0/zz-broken.png"
    one_line_error(capsys, ["run", str(ds), "--out", str(tmp_path / "r2"), "--strict", *FAST], match="zz-broken.png")
    assert snapshot(ds) == before


def test_python_dash_m_and_version():
    r = subprocess.run([sys.executable, "-m", "memscan", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("memscan ")
    r = subprocess.run([sys.executable, "-m", "memscan", "run", "--no-such-flag"], capture_output=True, text=True)
    assert r.returncode == 2 and "no-such-flag" in r.stderr


@pytest.mark.parametrize("printer, verdict", [("console.print", 0), ("console.print", 1), ("typer.echo", 0),
                                              ("typer.echo", 1)])
def test_a_reader_closing_the_pipe_keeps_the_verdict(tmp_path, printer, verdict):
    """``memscan rank | head`` exits 0 (rich and click both exit 1 on a broken pipe, memscan's "gate failed");
    ``memscan check | head`` still fails a failed gate."""
    script = tmp_path / "gone.py"
    script.write_text("import sys\nimport typer\nimport memscan.cli as cli\n"
                      "from memscan.cli.console import console, exit_code_if_reader_gone\n"
                      "app = typer.Typer()\n@app.command()\n"
                      f"def flood():\n    exit_code_if_reader_gone({verdict})\n"
                      f"    for _ in range(20000):\n        {printer}('x' * 70)\n"
                      "cli._register()\ncli.app = app\nsys.exit(cli.main([]))\n")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", f'"{sys.executable}" "{script}" | head -1'],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == verdict and p.stdout.strip() == "x" * 70, (p.returncode, p.stderr[-500:])


@pytest.mark.parametrize("command", ["run", "eval-noise", "rank", "check", "memorization", "report", "plot"])
def test_help_fits_80_columns_without_cutting_text(command):
    env = {**__import__("os").environ, "COLUMNS": "80", "TERM": "dumb"}
    p = subprocess.run([sys.executable, "-m", "memscan", command, "--help"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "…" not in p.stdout and max(map(len, p.stdout.splitlines())) <= 80
