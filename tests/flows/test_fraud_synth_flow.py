"""generate_fraud_dataset end to end on a temporary Prefect server, locally and on S3.

Flow runs are slow to start here, so one test walks through the main claims: a run under a
tight budget with a too-large first chunk completes after OOM retries and writes the same
rows as an unconstrained run to a real S3 server; a re-run resumes from the manifest.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import boto3
import pytest

from flows.fraud_synth import generate as gen
from flows.fraud_synth.flow import demo, generate_fraud_dataset
from headroom.prefect.report import load_attempts
from headroom.storage import TMP_MARK, open_storage

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

COMMON = {
    "transactions": 300_000,
    "file_size": "3MB",  # 157,895 transactions a file: two files
    "start": date(2024, 2, 1),
    "end": date(2024, 2, 29),
    "seed": 11,
}


def checksums(manifest: dict) -> dict[int, str]:
    return {e["index"]: e["checksum"] for e in manifest["files"]}


def test_forced_oom_same_rows_on_s3_and_resume(
    tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "tight"
    monkeypatch.setenv("HEADROOM_MEMORY_LIMIT", "400MB")
    # 2,000 extra bytes per buffered row: the default first chunk (131,072 rows) needs
    # ~350 MB, well above the ~270 MiB cap a fraud-gen task gets in a 400 MB budget.
    state = generate_fraud_dataset(
        out=str(local), extra_bytes_per_row=2_000, return_state=True, **COMMON
    )
    monkeypatch.delenv("HEADROOM_MEMORY_LIMIT")
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["complete"] and summary["files"] == 2 and summary["transactions"] == 300_000
    attempts = [
        a
        for a in load_attempts(str(state.state_details.flow_run_id))
        if a.task == "write-transaction-file"
    ]
    ooms = [a for a in attempts if a.outcome not in ("ok",)]
    assert ooms and all(a.outcome in ("watchdog", "oom-killer", "allocator") for a in ooms)
    assert sum(a.outcome == "ok" for a in attempts) == 2
    # Each file that ran out of memory was written at a smaller chunk by a later attempt. (On
    # a loaded machine one file has been seen to get through at the first size, under its cap.)
    for run_id in {a.task_run_id for a in ooms}:
        own = sorted((a for a in attempts if a.task_run_id == run_id), key=lambda a: a.attempt)
        assert own[-1].outcome == "ok", [(a.chunk, a.outcome) for a in own]
        assert own[-1].chunk < min(a.chunk for a in own if a.outcome != "ok")
    assert all(a.peak_mb <= a.cap_mb for a in attempts if a.outcome == "ok")
    tight = open_storage(local).read_json("manifest.json")
    for entry in tight["files"]:
        assert gen.file_checksum(str(local / entry["path"])) == entry["checksum"]
    assert not list(local.rglob(f"{TMP_MARK}*"))

    # Unconstrained, to S3: the same rows.
    out = f"s3://{s3_bucket}/fraud"
    summary = generate_fraud_dataset(out=out, max_workers=2, **COMMON)
    storage = open_storage(out)
    on_s3 = storage.read_json("manifest.json")
    assert summary["written"] == 2 and checksums(on_s3) == checksums(tight)
    assert on_s3["fraud"] == tight["fraud"]

    # Lose one file and the manifest: the re-run writes only that file.
    s3 = boto3.client("s3")
    for key in ("fraud/manifest.json", "fraud/" + gen.part_path(1), "fraud/" + gen.sidecar_path(1)):
        s3.delete_object(Bucket=s3_bucket, Key=key)
    again = generate_fraud_dataset(out=out, **COMMON)
    assert (again["written"], again["skipped"]) == (1, 1)
    assert checksums(storage.read_json("manifest.json")) == checksums(tight)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert not [k for k in keys if TMP_MARK in k]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"fraud_rate": 1.5}, "fraud_rate"),
        ({"end": date(2024, 1, 1)}, "end"),
        ({"size": "0GB", "transactions": None}, "size"),
        ({"out": "no-such-storage-block"}, "out"),
    ],
)
def test_bad_parameters_fail_before_any_work(tmp_path: Path, change: dict, named: str) -> None:
    params = {**COMMON, "out": str(tmp_path / "bad"), **change}
    state = generate_fraud_dataset(return_state=True, **params)
    assert state.is_failed()
    assert named in str(state.result(raise_on_failure=False))
    assert not (tmp_path / "bad" / "transactions").exists()


def test_other_dataset_in_out_and_unreachable_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "taken"
    gen.generate_dataset_local(out, transactions=20_000, files=1, seed=99)
    state = generate_fraud_dataset(out=str(out), return_state=True, **COMMON)
    assert state.is_failed()
    assert "already holds a different dataset" in str(state.result(raise_on_failure=False))

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    state = generate_fraud_dataset(out="s3://nowhere/fraud", return_state=True, **COMMON)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "parameter out: cannot reach s3://nowhere/fraud" in message
    assert "127.0.0.1:9" in message  # the host that does not answer


def test_demo(tmp_path: Path) -> None:
    line = demo(tmp_path)
    manifest = open_storage(tmp_path / "fraud").read_json("manifest.json")
    assert manifest["complete"] and f"{manifest['rows']:,} transactions" in line
