"""Budgeted tasks on a real (temporary) Prefect server: retries, limits, admission, Dask."""

from __future__ import annotations

import os

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from headroom import Chunking
from headroom.prefect import FLOW_HOOKS, FLOW_TAG_OOM, map_bounded
from headroom.prefect import budgeted_task as budgeted
from headroom.prefect.report import load_attempts
from tests.headroom import bodies

pytestmark = pytest.mark.usefixtures("prefect_harness")

MIB = 1 << 20

grow = budgeted(
    bodies.grow_with_chunk,
    tag="test-oom",
    chunk=Chunking("rows_per_chunk", default=400_000, floor=10_000),
    oom_retries=3,
)
grow_or_drop = budgeted(
    bodies.grow_then_lose_connection,
    tag="test-oom",
    chunk=Chunking("rows_per_chunk", default=400_000, floor=10_000),
    oom_retries=3,
    retries=1,
    transient=(ConnectionError,),
)
reject = budgeted(bodies.fail_with_value_error, tag="test-oom", oom_retries=3)
with_cap = budgeted(
    bodies.report_cap, tag="test-oom", chunk=Chunking("rows_per_chunk", default=1000, floor=10)
)
sleep_three = budgeted(bodies.sleep_for, tag="test-three")
sleep_heavy = budgeted(bodies.sleep_for, tag="test-weighted")


def _overlap(spans: list[dict]) -> int:
    """Most spans open at one instant."""
    events = sorted([(s["started"], 1) for s in spans] + [(s["ended"], -1) for s in spans])
    live = most = 0
    for _, step in events:
        live += step
        most = max(most, live)
    return most


def test_over_cap_task_retries_smaller_and_completes():
    @flow(**FLOW_HOOKS)
    def shrinking():
        return grow(total_rows=400_000, bytes_per_row=1024)

    state = shrinking(return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["rows"] == 400_000
    assert result["rows_per_chunk"] < 400_000  # the first size (390 MiB) cannot fit 300 MiB

    flow_run_id = str(state.state_details.flow_run_id)
    attempts = load_attempts(flow_run_id)
    assert [a.outcome for a in attempts] == ["watchdog", "ok"]
    assert attempts[0].peak_mb > 280
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        assert FLOW_TAG_OOM in run.tags
        artifacts = client.read_artifacts()
    reports = [a for a in artifacts if a.key == "memory-report" and a.flow_run_id == run.id]
    assert reports and "data:image/png;base64," in reports[0].data
    assert "| grow-with-chunk | 1 |" in reports[0].data and "watchdog" in reports[0].data
    tables = [a for a in artifacts if a.type == "table" and a.flow_run_id == run.id]
    assert tables and {a.key for a in tables} == {"attempts-grow-with-chunk"}
    assert any(
        len(a.data if isinstance(a.data, list) else __import__("json").loads(a.data)) == 2
        for a in tables
    )


def test_chunk_after_a_transient_error_follows_the_last_oom(tmp_path):
    # OOM (a real child past its 300 MiB cap), then a dropped connection at the smaller size:
    # the third attempt keeps the size the OOM led to instead of going back to the first.
    @flow
    def oom_then_drop():
        return grow_or_drop(
            total_rows=400_000, bytes_per_row=1024, calls_file=str(tmp_path / "calls")
        )

    state = oom_then_drop(return_state=True)
    assert state.is_completed(), state.message
    attempts = load_attempts(str(state.state_details.flow_run_id))
    assert [a.outcome for a in attempts] == ["watchdog", "transient:ConnectionError", "ok"]
    assert attempts[0].peak_mb > 280
    first, second, third = (a.chunk for a in attempts)
    assert second < first
    assert third <= second
    assert attempts[2].chunk_origin == "shrunk after OOM"
    calls = [int(line) for line in (tmp_path / "calls").read_text().split()]
    assert calls == [first, second, third]  # the body really got each size


def test_body_taking_cap_mb_gets_its_cap_and_chunk():
    @flow
    def capped():
        return with_cap(chunk_scale=0.5)

    assert capped() == {"cap_mb": 300.0, "rows_per_chunk": 500}


def test_value_error_fails_once_without_retry():
    @flow
    def bad_input():
        return reject(path="day-3.csv")

    state = bad_input(return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="day-3.csv: line 3"):
        state.result()
    attempts = load_attempts(str(state.state_details.flow_run_id))
    assert [a.outcome for a in attempts] == ["ValueError"]


def test_tag_limit_three_is_never_exceeded():
    @flow
    def twelve():
        outcomes = map_bounded(
            sleep_three, [{"seconds": 1.0, "label": str(i)} for i in range(12)], max_workers=12
        )
        return [o.value for o in outcomes]

    state = twelve(return_state=True)
    spans = state.result()
    assert len(spans) == 12
    assert _overlap(spans) <= 3
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    (progress,) = [a for a in artifacts if a.type == "progress"]
    assert progress.data == 100.0


def test_memory_weighted_admission_bounds_overlap():
    # 1500 MiB caps under a 4 GiB budget (limit 3796 MiB): at most two at once, though the
    # tag would let ten run.
    @flow
    def heavy():
        outcomes = map_bounded(
            sleep_heavy, [{"seconds": 1.0, "label": str(i)} for i in range(4)], max_workers=4
        )
        return [o.value for o in outcomes]

    spans = heavy()
    assert len(spans) == 4
    assert _overlap(spans) == 2


@pytest.mark.slow
def test_dask_worker_survives_an_over_cap_task():
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        memory_limit="2GiB",
        dashboard_address=None,
    ) as cluster:
        with Client(cluster) as client:
            before = client.run(os.getpid)

            @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
            def on_dask():
                return grow.submit(total_rows=400_000, bytes_per_row=1024).result()

            result = on_dask()
            after = client.run(os.getpid)
    assert result["rows"] == 400_000 and result["rows_per_chunk"] < 400_000
    assert before == after  # same workers, same processes: none was killed or restarted
