"""Exceptions raised at memscan's public boundary.

Every error a user can cause is a ``MemscanError`` whose message is one line naming the file or
option at fault and the fix. The CLI maps each class to an exit code in one place
(``memscan.cli.errors``); the library never exits the process itself.
"""
from __future__ import annotations


class MemscanError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in memscan."""


class DatasetError(MemscanError):
    """The dataset path, its layout, a manifest or an image is unusable."""


class ConfigError(MemscanError, ValueError):
    """An option value is out of range or names an unknown choice."""


class OutputExistsError(MemscanError):
    """The output folder exists and neither overwrite nor resume was asked for."""


class FolderInUseError(OutputExistsError):
    """Another memscan process holds the run folder's lock."""


class RunFolderError(MemscanError):
    """A run folder's files (arguments, checkpoint, marker) are missing, damaged or foreign."""


class ModelError(MemscanError):
    """A model name, weights file or hub download failed."""


class TrainingError(MemscanError):
    """Training diverged (NaN/inf loss) or ran out of memory."""


class OutputError(MemscanError):
    """A file could not be written (disk full, permissions); nothing half-written is left."""


class Interrupted(MemscanError):
    """The user stopped a run (Ctrl-C); the message says how to resume it."""


class ReportError(MemscanError):
    """A report file is missing, unreadable or of an unknown format version."""


def check_choice(name: str, value: str, choices) -> str:
    """Validate a string option against its valid choices, listing them in the error."""
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of: {', '.join(choices)}")
    return value
