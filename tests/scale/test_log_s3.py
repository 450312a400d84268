"""The prediction log's sealed parts on S3 (issue 14.2, `serving.log_uri`), against moto's S3-compatible server:
compaction ships each Parquet part whole and drops the local copy, the live segment stays local, readers list
and read shipped parts beside local ones (once each, in order), a store that refuses keeps the part here, and a
config that stops shipping still reads what was shipped; a part shipped between listing and reading is read from
the store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.scale.engines import S3_ENV, s3, s3_keys
from tollgate.predlog import (
    PredictionLog,
    compact,
    configure_remote,
    log_parts,
    part_frames,
    part_name,
    read_log,
    set_remote,
)


def _records(start: int, n: int) -> list[dict[str, object]]:
    return [
        {
            "prediction_id": f"p{i}",
            "request_id": f"r{i}",
            "ts": 1.7e9 + i,
            "entity_id": f"C{i}",
            "model_version": "1",
            "role": "champion",
            "score": i / 1000,
            "decision": i % 2,
            "latency_ms": 1.0,
            "features": {"tenure": i},
        }
        for i in range(start, start + n)
    ]


def test_sealed_parts_are_shipped_to_s3_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    folder = tmp_path / "log" / "churn"
    with s3("tollgate-log") as store:
        configure_remote(folder, f"s3://{store.bucket}/predlog", store.endpoint, "churn")
        log = PredictionLog(folder, fsync=False, rotate_rows=100)
        for start in (0, 100):  # each write of 100 rows seals its segment (rotate_rows)
            log.write(_records(start, 100))
        log.write(_records(200, 80))  # the live segment
        compact(folder)
        shipped = sorted(k for k in s3_keys(store) if k.startswith("predlog/churn/"))
        assert len(shipped) == 2 and all(k.endswith(".parquet") for k in shipped), shipped
        assert not list(folder.glob("seg-*.parquet"))  # shipped parts are not kept here
        parts = log_parts(folder)
        assert [isinstance(p, str) for p in parts] == [True, True, False]  # the live segment stays local
        assert [part_name(p).split(".")[0] for p in parts] == sorted(part_name(p).split(".")[0] for p in parts)
        read = read_log(folder)
        assert sorted(read["prediction_id"]) == sorted(f"p{i}" for i in range(280))
        assert read.set_index("prediction_id").loc["p7", "f.tenure"] == 7

        # a part listed here and shipped before it is read is read from the store
        log.close()  # the live segment becomes a local part
        (local,) = folder.glob("seg-*.parquet")
        (listed,) = [p for p in log_parts(folder) if p == local]
        compact(folder)
        assert not local.exists() and sum(len(f) for f in part_frames(listed)) == 80

        # stop shipping: a new part stays here, the shipped ones are still read
        set_remote(folder, None)
        log = PredictionLog(folder, fsync=False, rotate_rows=100)
        log.write(_records(280, 10))
        log.close()
        (local,) = folder.glob("seg-*.parquet")
        compact(folder)
        assert local.exists() and len(read_log(folder)) == 290

        # a store that refuses: nothing is lost, the part stays here and is read from here
        set_remote(folder, "s3://no-such-bucket/predlog/churn", store.endpoint)
        compact(folder)
        assert local.exists() and len(read_log(folder)) == 290
        configure_remote(folder, f"s3://{store.bucket}/predlog", store.endpoint, "churn")
        compact(folder)
        assert not local.exists() and len([k for k in s3_keys(store) if k.startswith("predlog/churn/")]) == 4
        assert len(read_log(folder)) == 290 and os.listdir(folder) == ["remote.json"]
