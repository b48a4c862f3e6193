"""The ``memscan`` command line (typer + rich). One small module per command; the library below
never imports typer or rich. Exceptions become exit codes in one place: ``EXIT_CODES``."""
from __future__ import annotations

import sys

import typer

from ..errors import (ConfigError, DatasetError, FolderInUseError, Interrupted, MemscanError, ModelError,
                      OutputError, OutputExistsError, ReportError, RunFolderError, TrainingError)

EXIT_CODES = {  # first match wins; README "Errors" lists them
    FolderInUseError: 75, ConfigError: 2, DatasetError: 2, OutputExistsError: 2, ReportError: 2, ModelError: 2,
    RunFolderError: 2, TrainingError: 3, OutputError: 74, Interrupted: 130, MemscanError: 2,
}
EXIT_INTERRUPTED = 130
EXIT_BUG = 70
EXIT_NO_SPACE = 74   # EX_IOERR: a full disk or a location memscan may not write

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Find mislabeled, atypical and memorized images from one short training run "
                       "(Cumulative Sample Gradient, stopped at the weight-norm peak).")
state = {"debug": False}


def _print_version(value: bool):
    if value:
        from .. import __version__
        typer.echo(f"memscan {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
          version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                       callback=_print_version)):
    state["debug"] = debug


def _register():
    # each module adds its command to ``app``; import order is the order in --help
    from . import run, rank, eval_noise, memorization, check, diff, report, apply, export  # noqa: F401


def _terminate(signum, frame):
    # torchrun (and CI runners, schedulers) stop a job with SIGTERM: treat it like Ctrl-C so the run
    # ends with its "how to resume" message instead of dying silently
    raise KeyboardInterrupt


def _ignore_terminate():
    """While an error is reported, a second signal (torchrun stopping the other ranks) must not cut it off."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv=None) -> int:
    _register()
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    from .console import IF_READER_GONE, ReaderGone, err_console, quiet_stdout
    IF_READER_GONE["code"] = 0
    try:
        rc = app(args=argv, standalone_mode=False)  # returns typer.Exit's code in this mode
        return rc if isinstance(rc, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except ReaderGone:   # rich's console found stdout's reader gone
        return IF_READER_GONE["code"]
    except SystemExit as e:
        # click turns EPIPE on stdout (typer.echo) into sys.exit(1) after wrapping stdout; nothing else exits so
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            return IF_READER_GONE["code"]
        raise e
    except KeyboardInterrupt:
        _ignore_terminate()
        err_console.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    except MemscanError as e:
        _ignore_terminate()
        if state["debug"]:
            raise
        from .console import safe
        err_console.print(f"[bold red]error:[/] {safe(e)}", highlight=False, soft_wrap=True)
        return next(code for cls, code in EXIT_CODES.items() if isinstance(e, cls))
    except OSError as e:   # the machine, not memscan: a full disk or a folder it may not write
        import errno
        if e.errno == errno.EPIPE:   # stdout's reader went away outside click's own handling of it
            quiet_stdout()
            return IF_READER_GONE["code"]

        from ..files import NO_SPACE
        if e.errno in NO_SPACE:
            why = "no space left on device"
            fix = "free disk space and rerun (an interrupted run continues with 'memscan resume RUN')"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            why, fix = e.strerror.lower(), "choose a location you may write to, or fix its permissions"
        else:
            return _internal_error(e)
        _ignore_terminate()
        err_console.print(f"[bold red]error:[/] {why}{_file_of(e)}; {fix}", highlight=False, soft_wrap=True)
        return EXIT_NO_SPACE
    except Exception as e:  # click usage errors and real bugs
        # typer vendors click: recognise its usage errors by shape, not by import path
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        if type(e).__name__ == "Abort":   # click turns Ctrl-C (and a stray EOFError) into Abort
            if isinstance(e.__cause__, EOFError):
                return _internal_error(e.__cause__)
            _ignore_terminate()
            err_console.print("[yellow]interrupted[/]")
            return EXIT_INTERRUPTED
        return _internal_error(e)


def _internal_error(e: Exception) -> int:
    if state["debug"]:
        raise e
    from .console import err_console, safe
    err_console.print(f"[bold red]internal error:[/] {type(e).__name__}: {safe(e)} (rerun with --debug for "
                      "the traceback and report it)", highlight=False, soft_wrap=True)
    return EXIT_BUG


def _file_of(e: OSError) -> str:
    from .console import safe
    return f" at '{safe(e.filename)}'" if e.filename else ""


def entry():
    sys.exit(main())
