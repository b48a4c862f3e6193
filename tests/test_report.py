"""The report's metadata schema: one dataclass, 1-based epochs, validated on read."""
import json

import pyarrow.parquet as pq
import pytest

from memscan.errors import ReportError
from memscan.report import META_KEY, ReportMeta, read_metadata

from helpers import report_meta


def test_round_trip_and_unknown_keys():
    d = report_meta(location="/data", classes=["a", "b"], n=4)
    meta = ReportMeta.from_dict({**d, "added_by_a_newer_version": 1})
    assert meta.to_dict() == d and meta.dataset.classes == ["a", "b"] and meta.stop.epochs_trained == 1


@pytest.mark.parametrize("drop", ["dataset", "stop", "config", "curves", "memscan_version"])
def test_missing_keys_name_the_file(drop):
    d = report_meta(location="/data", classes=["a", "b"], n=4)
    del d[drop]
    with pytest.raises(ReportError, match="'some/report.parquet' lacks report metadata"):
        ReportMeta.from_dict(d, source="some/report.parquet")


def test_a_real_run_uses_one_based_epochs(digits_run):
    _, run = digits_run
    meta = read_metadata(run)
    done = meta.stop.epochs_trained
    assert len(meta.curves["weight_norm"]) == done
    assert meta.stop.mislabel_window == [done // 2 + 1, done]
    assert 1 <= meta.stop.csg_epochs <= done
    assert meta.stop.peak_epoch is None or 1 <= meta.stop.peak_epoch <= done
    raw = json.loads(pq.read_schema(run / "report.parquet").metadata[META_KEY])
    assert ReportMeta.from_dict(raw).to_dict() == meta.to_dict()
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["stop"] == meta.to_dict()["stop"]
