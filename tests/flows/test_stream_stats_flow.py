"""The stream_stats flow on a temporary Prefect server, embedded source, real DuckDB sink."""

from __future__ import annotations

import json

import pytest
from prefect.client.orchestration import get_client

from flows.stream_stats.compute.baseline import compare_with_baseline
from flows.stream_stats.flow import stream_stats
from flows.stream_stats.params import StreamParams
from flows.stream_stats.sources.embedded import fraud_dataset, read_events
from tests.machine import offers_a_gpu_to_cupy

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


def test_bounded_runs_continue_each_other_and_publish_metrics(tmp_path):
    dataset = fraud_dataset(tmp_path / "fraud", transactions=30_000, seed=2, files=3, days=1)
    sink = str(tmp_path / "stats.duckdb")
    common = dict(
        source=str(dataset),
        sink=sink,
        window="5min",
        watermark="10min",
        max_batch=8_000,
        backend="auto",
    )
    first = stream_stats(**common, max_events=12_000)
    assert first["events"] == 12_000
    assert first["backend"] == ("gpu" if offers_a_gpu_to_cupy() else "cpu")  # backend auto
    assert first["lag"]["remaining_events"] == 18_000
    state = stream_stats(**common, max_duration="2min", return_state=True)
    assert state.is_completed(), state.message
    second = state.result()
    assert second["events"] == 18_000 and second["lag"]["remaining_events"] == 0
    spec = StreamParams(source="x", sink="x", window="5min", watermark="10min").spec()
    assert compare_with_baseline(sink, read_events(dataset), spec) == []

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    keys = {a.key for a in artifacts if a.flow_run_id == state.state_details.flow_run_id}
    assert {"stream-stats-metrics", "stream-stats-calls"} <= keys


def test_bad_parameters_fail_before_any_work(tmp_path):
    state = stream_stats(
        source=str(tmp_path),
        sink=str(tmp_path / "s.duckdb"),
        window="1min",
        slide="7s",
        return_state=True,
    )
    assert state.is_failed()
    assert "window" in state.message or "slide" in state.message
    assert not (tmp_path / "s.duckdb").exists()


def test_a_dataset_without_transaction_files_fails_the_run_saying_so(tmp_path):
    sink = tmp_path / "s.duckdb"
    state = stream_stats(source=str(tmp_path), sink=str(sink), return_state=True)
    assert state.is_failed()
    assert f"BadInput: parameter source: {tmp_path} has no manifest.json" in state.message
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps({"files": []}))
    state = stream_stats(source=str(empty), sink=str(sink), return_state=True)
    assert state.is_failed()
    assert f"BadInput: parameter source: {empty} lists no transaction files" in state.message
    assert not sink.exists()  # failed before the sink was touched


def test_the_gpu_line_of_the_metrics_report_reads_nvmls_figures():
    from flows.stream_stats.flow import gpu_line
    from headroom.budget import GpuDevice

    device = GpuDevice(0, "H200", total_mb=143_771.0, free_mb=100_000.0, utilization_pct=37.0)
    assert gpu_line([device]) == "H200, utilisation 37 %, memory used 43,771 of 143,771 MiB"
    unknown = GpuDevice(1, "T4", total_mb=15_360.0, free_mb=15_360.0)
    assert gpu_line([unknown]) == "T4, utilisation ? %, memory used 0 of 15,360 MiB"
    assert gpu_line([]) is None
