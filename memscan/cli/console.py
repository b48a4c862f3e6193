"""Shared rich consoles and the progress display fed by the library's ``progress`` callback."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..text import printable

class ReaderGone(Exception):
    """stdout's reader closed the pipe (``memscan rank ... | head``): the user took what they wanted."""


#: the exit code a command ends with when stdout's reader goes away while it prints: 0, or a gate's verdict
#: (``check ... | head`` must still fail a failed gate)
IF_READER_GONE = {"code": 0}


def exit_code_if_reader_gone(code: int) -> None:
    IF_READER_GONE["code"] = code


def quiet_stdout() -> None:
    """Send what is left of stdout nowhere once its reader is gone (Python would report the failed flush of a
    closed pipe at exit)."""
    import os
    import sys
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(fd, sys.stdout.fileno())
        finally:
            os.close(fd)
    except (OSError, ValueError):   # a replaced stdout without a file descriptor: nothing to redirect
        pass


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich's own handling exits 1 whatever the command's verdict
        self.quiet = True
        quiet_stdout()
        raise ReaderGone


console = _Console()
err_console = Console(stderr=True)


def safe(text) -> str:
    """Text from data (file and class names, paths) made safe to print through rich: control
    characters (terminal escape sequences, newlines) shown as ``\\xNN``, markup escaped."""
    return escape(printable(text))


class RunProgress:
    """Turns ``progress(event, **info)`` calls from ``memscan.pipeline.run`` into bars and lines."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True,
                                 disable=quiet)
        self.tasks = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def _task(self, key, desc, total):
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(desc, total=total)
        return self.tasks[key]

    def __call__(self, event, **info):
        if self.quiet:
            return
        p = self.progress
        if event == "indexed":
            p.console.print(f"indexed {info['n']} images in {info['classes']} classes"
                            + (f" ({info['ignored']} non-image files ignored)" if info["ignored"] else ""))
        elif event == "decode":
            p.update(self._task("decode", "decoding", info["total"]), completed=info["done"])
        elif event == "decoded":
            if "decode" in self.tasks:
                p.remove_task(self.tasks.pop("decode"))
            src = "from cache" if info["from_cache"] else "decoded"
            p.console.print(f"{src}: {info['n']} images at {info['size']}x{info['size']} px"
                            + (", memory-mapped from the on-disk cache" if info.get("mapped") else "")
                            + (f", [yellow]{info['skipped']} unreadable skipped[/]" if info["skipped"] else ""))
            for note in info.get("notes") or ():
                p.console.print(f"[yellow]note:[/] {safe(note)}", highlight=False)
        elif event == "resumed":
            p.console.print(f"resuming after epoch {info['epoch']} (checkpoint)")
        elif event == "step":
            t = self._task("train", "training", info["steps"])
            p.update(t, completed=info["step"], total=info["steps"])
        elif event == "model":
            if "train" in self.tasks:
                p.reset(self.tasks["train"])
            how = "kept from the interrupted run" if info["kept"] else f"{info['seconds']:.1f}s"
            p.console.print(f"model {info['done']:>3}/{info['total']}  accuracy {info['train_acc']:.3f} on its subset, "
                            f"{info['held_out_acc']:.3f} held out  {how}", highlight=False)
        elif event == "anneal":
            if "train" in self.tasks:
                p.reset(self.tasks["train"])
            p.console.print(f"anneal {info['anneal_epoch'] + 1}/{info['anneal_epochs']} at lr {info['lr']:.3g}  "
                            f"acc {info['train_acc']:.3f}  (fits further before predicting; not in the scores' "
                            "windows)", highlight=False)
        elif event == "epoch":
            if "train" in self.tasks:
                p.reset(self.tasks["train"])
            peak = info.get("peak_epoch")
            mark = f"  [green]peak at epoch {peak + 1}[/]" if peak is not None else ""
            rs = (f"  suspects {info['suspects']} (agreement {info['rank_stability']:.2f})"
                  if info.get("suspects") is not None else "")
            val = f"  val loss {info['val_loss']:.3f} acc {info['val_acc']:.3f}" if "val_loss" in info else ""
            p.console.print(f"epoch {info['epoch'] + 1:>3}/{info['max_epochs']}  loss {info['loss_mean']:.3f}  "
                            f"acc {info['train_acc']:.3f}  weight norm {info['weight_norm']:.3f}  "
                            f"mean grad {info['grad_mean']:.3g}{rs}{val}  {info['seconds']:.1f}s{mark}",
                            highlight=False)
