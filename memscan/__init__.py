"""memscan: find mislabeled, atypical and memorized samples from one short training run.

``run(dataset, cfg)`` trains and writes a report folder; ``read_report(path)`` reads it back.
"""
__version__ = "0.1.0"


def run(*args, **kwargs):
    """See ``memscan.pipeline.run``."""
    from .pipeline import run as _run
    return _run(*args, **kwargs)


def read_report(path):
    """See ``memscan.report.read_report``."""
    from .report import read_report as _read
    return _read(path)


__all__ = ["run", "read_report", "__version__"]
