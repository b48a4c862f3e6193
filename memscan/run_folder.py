"""The run folder: the only code that knows its file names, and the owner of its life cycle.

A run folder is provably memscan's: ``memscan-run.json`` (the marker: tool name, version, kind)
is written when the folder is started. ``--overwrite`` removes only the files memscan itself
writes (the names below, the per-epoch trajectories, its plots) and only in a marked folder,
never ``.`` or a folder holding the current directory, never a folder holding the dataset; other
files stay. A started folder is locked (``flock`` on ``memscan.lock``, released by the kernel
when the process ends, however it ends), so a second run on the same folder fails at once.
Checkpoints are plain dicts of tensors, numbers and strings, loaded with ``weights_only=True``:
nothing read from a run folder is executed. Every file is written atomically (``files``).
"""
from __future__ import annotations

import io
import json
import os
import re
import socket
import stat
import sys
from datetime import datetime
from pathlib import Path

from . import __version__
from .errors import ConfigError, FolderInUseError, OutputError, OutputExistsError, RunFolderError
from .files import TMP_NAME, is_regular_file, write_atomic_with, write_bytes_atomic, write_json_atomic

MARKER = "memscan-run.json"
LOCK = "memscan.lock"
REPORT = "report.parquet"
RUN_ARGS = "run-args.json"
RUN_INFO = "run.json"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
CURVES = "epochs.parquet"
TRAJECTORIES = "trajectories"
EVAL = "eval.json"
TRUTH = "truth.csv"
REFERENCE = "reference.parquet"
LEAKS = "leaks.parquet"                            # run --test: test images that duplicate training images
HTML = "report.html"
PLOTS = "plots"
PLOT_NAMES = ("norms", "gradient", "accuracy", "csg", "classes", "learning_time", "noise_matrix")   # always drawn
REFERENCE_PLOT = "reference"   # drawn only with --reference, and as much memscan's to replace and remove
OWN_PLOTS = frozenset(f"{p}.png" for p in (*PLOT_NAMES, REFERENCE_PLOT))
CHECK_FILES = ("check.json", "check.xml", "check.md")
EPOCH_FILE = re.compile(r"epoch-\d{4,}\.parquet")   # in trajectories/ (trajectories.epoch_file)
MEMORIZATION = "memorization.parquet"              # memscan memorization: the reference estimate
MODELS = "models"                                  # ... and one file per trained model in models/
MODEL_FILE = re.compile(r"model-\d{4,}\.parquet")
OWN_FILES = (MARKER, REPORT, RUN_ARGS, RUN_INFO, CHECKPOINT, MODEL, CURVES, EVAL, TRUTH, REFERENCE, LEAKS, HTML,
             MEMORIZATION, *CHECK_FILES)
DEFAULT_BASE = Path("memscan-runs")
RUN_ARGS_KEYS = ("dataset", "config", "path_column", "label_column", "cache_dir", "val_dataset", "relabelled")


class RunFolder:
    """One run's folder. ``start`` (new run) and ``resume`` validate and lock it; ``RunFolder(path)``
    alone only names the files (readers, and the non-writing processes under torchrun)."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock_file = None
        self.begun = False        # set once the run replaced earlier files and saved its arguments
        self._was_empty = None    # set by start ("created" | "empty"): a failed start leaves the folder as it found it

    def __repr__(self) -> str:
        return f"RunFolder('{self.path}')"

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(failed=exc_type is not None and not self.begun)

    # ------------------------------------------------------------ file names
    report = property(lambda self: self.path / REPORT)
    run_args = property(lambda self: self.path / RUN_ARGS)
    run_info = property(lambda self: self.path / RUN_INFO)
    checkpoint = property(lambda self: self.path / CHECKPOINT)
    model = property(lambda self: self.path / MODEL)
    curves = property(lambda self: self.path / CURVES)
    trajectories = property(lambda self: self.path / TRAJECTORIES)
    eval_json = property(lambda self: self.path / EVAL)
    truth = property(lambda self: self.path / TRUTH)
    reference = property(lambda self: self.path / REFERENCE)   # eval-noise: the instance-noise reference
    leaks = property(lambda self: self.path / LEAKS)
    html = property(lambda self: self.path / HTML)
    plots = property(lambda self: self.path / PLOTS)
    marker = property(lambda self: self.path / MARKER)
    memorization = property(lambda self: self.path / MEMORIZATION)
    models = property(lambda self: self.path / MODELS)

    def model_file(self, k: int) -> Path:
        """models/model-0007.parquet: what the k-th reference model predicted (``memorization_run``)."""
        return self.models / f"model-{k:04d}.parquet"

    def check_file(self, name: str) -> Path:
        if name not in CHECK_FILES:
            raise ValueError(name)
        return self.path / name

    def probabilities_file(self) -> Path:
        """A temporary memory-mapped buffer; named like an interrupted atomic write, so that a crash
        leaves nothing ``resume``/``--overwrite`` would not clean."""
        return self.path / f"probs.f32.tmp{os.getpid()}"

    # ------------------------------------------------------------ identity
    @staticmethod
    def _read_marker(path) -> dict | None:
        """The marker's JSON, or None. Only a regular file is read: a pipe planted there would block for good."""
        marker = Path(path) / MARKER
        if not is_regular_file(marker):
            return None
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    @staticmethod
    def is_run(path) -> bool:
        """True when ``path`` holds memscan's marker (a folder memscan started)."""
        info = RunFolder._read_marker(path)
        return info is not None and info.get("tool") == "memscan"

    def kind(self) -> str:
        """The marker's kind ("run" for folders of versions that wrote none)."""
        info = self._read_marker(self.path)
        return str(info.get("kind") or "run") if info is not None else "run"

    def _write_marker(self, kind: str) -> None:
        write_json_atomic(self.marker, {"tool": "memscan", "version": __version__, "kind": kind,
                                        "created": datetime.now().isoformat(timespec="seconds")})

    # ------------------------------------------------------------ start, resume, lock
    @classmethod
    def start(cls, path, *, guard=None, overwrite: bool = False, kind: str = "run") -> "RunFolder":
        """Validate and lock ``path`` for a new run. An existing memscan folder is kept until
        ``reset`` (called once the run's inputs proved good); a folder created here is removed by
        ``release(failed=True)`` when it holds nothing but the marker."""
        f = cls(path)
        if guard is not None:
            guard.check_folder(f.path)
        if f.path.exists() and not f.path.is_dir():
            raise ConfigError(f"--out '{f.path}' is a file; pass a folder for the run")
        if f.path.is_dir() and any(f.path.iterdir()):
            marked = cls.is_run(f.path)
            if marked:
                f._lock()   # a live run in it is named first, whatever else is wrong
            if not overwrite:
                f.release()
                raise OutputExistsError(f"output folder '{f.path}' already exists; pass --overwrite to replace "
                                        "the memscan files in it, or --out a new folder")
            if not marked:
                raise OutputExistsError(f"output folder '{f.path}' exists and is not a memscan run (no {MARKER}); "
                                        "refusing to overwrite it: choose another --out")
            if Path.cwd().resolve().is_relative_to(f.path.expanduser().resolve()):
                f.release()
                raise ConfigError(f"--overwrite refuses '{f.path}': it is the current directory or holds it; "
                                  "pass --out a run folder below it")
            return f
        created = not f.path.exists()
        try:
            f.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create run folder '{f.path}' ({e.strerror or e}); choose another --out") \
                from None
        f._was_empty = "created" if created else "empty"
        f._lock()
        f._write_marker(kind)
        return f

    @classmethod
    def resume(cls, path, *, result: str = REPORT, kind: str = "run", finished_ok: bool = False) -> "RunFolder":
        """Lock the folder of an interrupted run and clean writes the interruption cut short. ``result``:
        the file whose presence (without a checkpoint) means the run finished; ``kind``: the marker's kind
        the caller resumes ("run", or "memorization" for ``memscan memorization``); ``finished_ok``: the caller
        may continue a finished run (a memorization estimate given more models) and checks that itself."""
        f = cls(path)
        if not f.path.is_dir():
            raise ConfigError(f"--resume: no run folder '{f.path}'; pass the --out of the interrupted run")
        if not cls.is_run(f.path):
            raise RunFolderError(f"'{f.path}' is not a memscan run folder (no {MARKER}); pass the --out of a run "
                                 "started by this memscan version")
        found = f.kind()
        if found != kind:
            how = {"memorization": f"'memscan memorization DATASET --out {f.path} --resume'",
                   "run": f"'memscan resume {f.path}'"}.get(found, "the command that started it")
            raise RunFolderError(f"'{f.path}' holds a {found!r} folder, not a {kind!r} one; continue it with {how}")
        f._lock()
        if not finished_ok and (f.path / result).exists() and not f.checkpoint.exists():
            f.release()
            raise OutputExistsError(f"run '{f.path}' already finished ({result} is there); nothing to resume")
        f.clean_interrupted()
        return f

    def _check_subfolders(self) -> None:
        """memscan writes and deletes inside trajectories/ and plots/: never through a link elsewhere."""
        for sub in (self.trajectories, self.plots, self.models):
            self.check_subfolder(sub)

    @staticmethod
    def check_subfolder(sub: Path) -> None:
        """Refuse a run folder's subfolder that is a link or a file (a planted link would send writes elsewhere)."""
        if sub.is_symlink() or (sub.exists() and not sub.is_dir()):
            raise RunFolderError(f"'{sub}' in the run folder is a link or a file, not a folder memscan made; "
                                 "refusing to write or delete through it: remove it or choose another --out")

    def _lock(self) -> None:
        if self._lock_file is not None:
            return
        self._check_subfolders()
        try:
            import fcntl
        except ImportError:   # pragma: no cover - Windows: no advisory locks, run unlocked
            return
        try:   # never through a link: the lock file is truncated below
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise RunFolderError(f"cannot open the lock file '{self.path / LOCK}' ({e.strerror or e}); remove it if it "
                                 "is a link, or choose another --out") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):   # a pipe or device: unlockable, unseekable
            os.close(fd)
            raise RunFolderError(f"the lock file '{self.path / LOCK}' is not a regular file; remove it, or choose "
                                 "another --out")
        lf = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(lf.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lf.seek(0)
            holder = lf.read().strip() or "another process"
            lf.close()
            raise FolderInUseError(f"run folder '{self.path}' is in use by another memscan process ({holder}); "
                                   "wait for it to finish or pass another --out") from None
        lf.seek(0)
        lf.truncate()
        lf.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{datetime.now().isoformat(timespec='seconds')}: {' '.join(sys.argv[:3])}\n")
        lf.flush()
        self._lock_file = lf

    def release(self, *, failed: bool = False) -> None:
        """Unlock. After a failed start in a new or empty folder, the folder is left as it was found
        when nothing but the marker was written."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        if failed and self._was_empty and self.path.is_dir():
            if not {p.name for p in self.path.iterdir()} - {MARKER, LOCK}:
                for name in (MARKER, LOCK):
                    (self.path / name).unlink(missing_ok=True)
                if self._was_empty == "created":
                    self.path.rmdir()

    def reset(self, kind: str = "run") -> list[str]:
        """Remove what an earlier memscan run wrote here (nothing else), then mark the folder anew.
        Returns the names of other files left in place."""
        for name in OWN_FILES:
            (self.path / name).unlink(missing_ok=True)
        self.clean_interrupted()
        for folder, own in ((self.trajectories, lambda n: EPOCH_FILE.fullmatch(n)),
                            (self.plots, lambda n: n in OWN_PLOTS),
                            (self.models, lambda n: MODEL_FILE.fullmatch(n))):
            for p in folder.iterdir() if folder.is_dir() else ():
                if own(p.name) and (p.is_file() or p.is_symlink()):
                    p.unlink()
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        self._write_marker(kind)
        return sorted(p.name for p in self.path.iterdir() if p.name not in (MARKER, LOCK))

    def clean_interrupted(self) -> None:
        """Remove temporary files of memscan's own writes (and the probability buffer) cut short by a
        crash: ``NAME.tmp<pid>`` of the names memscan writes, nothing else."""
        for folder in (self.path, self.trajectories, self.plots, self.models):
            for p in folder.glob("*.tmp*") if folder.is_dir() else ():
                if self._own_temp(folder, p.name) and (p.is_file() or p.is_symlink()):
                    p.unlink(missing_ok=True)

    def _own_temp(self, folder: Path, name: str) -> bool:
        if not TMP_NAME.search(name):
            return False
        base = TMP_NAME.sub("", name)
        if folder == self.trajectories:
            return EPOCH_FILE.fullmatch(base) is not None
        if folder == self.plots:
            return base in OWN_PLOTS
        if folder == self.models:
            return MODEL_FILE.fullmatch(base) is not None
        return base in OWN_FILES or base == "probs.f32"

    # ------------------------------------------------------------ run arguments
    def save_args(self, args: dict) -> None:
        write_json_atomic(self.run_args, args)

    def load_args(self) -> dict:
        """The arguments the run was started with; a clear error for a damaged or foreign file."""
        if not self.run_args.exists():
            raise RunFolderError(f"'{self.path}' is not a resumable memscan run (no {RUN_ARGS}); pass the --out "
                                 "folder of the interrupted run")
        if not is_regular_file(self.run_args):
            raise RunFolderError(f"'{self.run_args}' is not a regular file; the run cannot be resumed: start a new run")
        try:
            args = json.loads(self.run_args.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunFolderError(f"'{self.run_args}' is damaged ({type(e).__name__}); the run cannot be resumed: "
                                 "start a new run") from None
        missing = [k for k in RUN_ARGS_KEYS if not isinstance(args, dict) or k not in args]
        if missing:
            raise RunFolderError(f"'{self.run_args}' lacks {', '.join(missing)}; the run cannot be resumed: start a "
                                 "new run")
        invalid = ("config (an object expected)" if not isinstance(args["config"], dict) else
                   "dataset (a path expected)" if not isinstance(args["dataset"], str) else
                   "relabelled (true or false expected)" if not isinstance(args.get("relabelled"), (bool, type(None)))
                   else None)
        wrong = [k for k in RUN_ARGS_KEYS + ("test_dataset", "encoding")
                 if k not in ("dataset", "config", "relabelled") and not isinstance(args.get(k), (str, type(None)))]
        if invalid is None and wrong:
            invalid = f"{', '.join(wrong)} (text or null expected)"
        if invalid is not None:
            raise RunFolderError(f"'{self.run_args}' holds an invalid {invalid}; the run cannot be resumed: start a "
                                 "new run")
        from .config import RunConfig, saved_config
        args["config"] = saved_config(args["config"])
        try:
            RunConfig.from_dict(args["config"])
        except ConfigError as e:
            raise RunFolderError(f"'{self.run_args}' holds an invalid config ({e}); the run cannot be resumed: "
                                 "start a new run") from None
        return args

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: dict) -> None:
        """Serialised in memory, then written atomically: a full disk never leaves a corrupt
        checkpoint, and the previous one survives until the new one is complete."""
        import torch
        buf = io.BytesIO()
        torch.save(state, buf)
        try:
            write_bytes_atomic(self.checkpoint, buf.getbuffer())
        except (OSError, OutputError) as e:
            prev = (f"the previous checkpoint '{self.checkpoint}' is intact" if self.checkpoint.exists()
                    else "no earlier checkpoint exists")
            why = getattr(e, "strerror", None) or e
            raise OutputError(f"cannot write checkpoint '{self.checkpoint}' ({why}); {prev}: free disk space, "
                              f"then 'memscan resume {self.path}'") from None

    def load_checkpoint(self) -> dict | None:
        """The last checkpoint as plain data (``weights_only=True``: a planted pickle cannot run code)."""
        from .models import load_weights_only
        if not self.checkpoint.exists():
            return None
        if not is_regular_file(self.checkpoint):
            raise RunFolderError(f"checkpoint '{self.checkpoint}' is not a regular file; it was not loaded: start a "
                                 "new run with --overwrite")
        try:
            ck = load_weights_only(self.checkpoint)
        except Exception as e:
            raise RunFolderError(f"checkpoint '{self.checkpoint}' is unreadable or not a memscan checkpoint "
                                 f"({type(e).__name__}); it was not loaded: start a new run with --overwrite") \
                from None
        if not isinstance(ck, dict) or not CHECKPOINT_KEYS <= set(ck) or not _checkpoint_types_ok(ck):
            raise RunFolderError(f"checkpoint '{self.checkpoint}' is not a memscan checkpoint; start a new run "
                                 "with --overwrite")
        return ck

    def drop_epochs_after(self, epoch: int) -> None:
        """Trajectory files of epochs after a checkpoint are redone on resume."""
        for f in self.trajectories.iterdir() if self.trajectories.is_dir() else ():
            if EPOCH_FILE.fullmatch(f.name) and int(f.stem.split("-")[1]) > epoch:
                _unlink_own(f)

    def restart_in_place(self) -> None:
        """Killed before the first checkpoint: the same run starts over in this folder."""
        for f in self.trajectories.iterdir() if self.trajectories.is_dir() else ():
            if EPOCH_FILE.fullmatch(f.name):
                _unlink_own(f)

    # ------------------------------------------------------------ results
    def write_table(self, table, dest: Path) -> None:
        import pyarrow.parquet as pq
        write_atomic_with(dest, lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    def write_model(self, state: dict) -> None:
        import torch
        buf = io.BytesIO()
        torch.save(state, buf)
        write_bytes_atomic(self.model, buf.getbuffer())

    def write_run_info(self, info: dict) -> None:
        write_json_atomic(self.run_info, info)

    def finish(self) -> None:
        """The run is complete: ``model.pt`` holds the final weights, the checkpoint goes."""
        self.checkpoint.unlink(missing_ok=True)


CHECKPOINT_KEYS = frozenset({"epoch", "config", "fingerprint", "model", "optimizer", "scheduler", "scaler", "rng",
                             "rule", "curves", "stopped"})


def _checkpoint_types_ok(ck: dict) -> bool:
    """The shapes ``train.fit`` relies on; the values themselves are checked when they are applied."""
    import torch
    epoch = ck["epoch"]
    return (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0
            and isinstance(ck["config"], dict) and isinstance(ck["model"], dict)
            and all(isinstance(v, torch.Tensor) for v in ck["model"].values())
            and all(isinstance(ck[k], dict) for k in ("optimizer", "scheduler", "scaler", "rule"))
            and isinstance(ck["rng"], torch.Tensor) and ck["rng"].dtype == torch.uint8
            and isinstance(ck["curves"], list) and all(isinstance(c, dict) for c in ck["curves"])
            and isinstance(ck["stopped"], bool))


def _unlink_own(path: Path) -> None:
    """Remove one of memscan's files; a folder planted under its name is refused, not followed."""
    if path.is_dir() and not path.is_symlink():
        raise RunFolderError(f"'{path}' is a folder where memscan keeps a file; move it away and resume again")
    path.unlink(missing_ok=True)


def latest_run(base=DEFAULT_BASE) -> Path:
    """The most recently written run folder under ``base`` (the default for the readers)."""
    from .errors import ReportError
    runs = sorted(Path(base).glob(f"*/{REPORT}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ReportError(f"no runs under '{base}'; pass a run folder or {REPORT}, or run 'memscan run' first")
    return runs[-1].parent


def default_run_path(dataset, base=None, suffix: str = "") -> Path:
    """``memscan-runs/<dataset name>-<time>``: a new folder for each run."""
    d = Path(dataset)
    name = (d.stem if d.is_file() else d.resolve().name) or "dataset"
    return Path(base or DEFAULT_BASE) / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}{suffix}"
