import os

import pytest
import torch

torch.set_num_threads(min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache from tests."""
    monkeypatch.setenv("MEMSCAN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "memscan-cache"))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """(dataset folder, run folder) of one tiny real run, shared by the report-reading tests."""
    from helpers import trained_digits_run
    return trained_digits_run(tmp_path_factory.mktemp("digits-run"))
