"""A task that waits on a slot says, while it waits, what it waits for and who holds it."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from headroom import waiting
from headroom.prefect import FLOW_HOOKS, budgeted_task, map_bounded
from tests.headroom import bodies

pytestmark = pytest.mark.usefixtures("prefect_harness")

sleep_one = budgeted_task(bodies.sleep_for, tag="test-one", name="sleep-test-one")


def test_a_task_waiting_on_a_stranded_tag_slot_logs_who_holds_it(monkeypatch):
    from tests.conftest import _send_queued_logs

    monkeypatch.setattr(waiting, "LOG_EVERY_S", 1.0)
    with get_client(sync_client=True) as client:
        # The only slot of test-one held by nobody, as a killed run on a remote server leaves
        # it until its lease expires (a local server's repair runs once per process).
        client.update_global_concurrency_limit(
            "tag:test-one", GlobalConcurrencyLimitUpdate(active_slots=1)
        )

    def free_later() -> None:
        time.sleep(4)
        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(
                "tag:test-one", GlobalConcurrencyLimitUpdate(active_slots=0)
            )

    @flow(**FLOW_HOOKS)
    def waits() -> list:
        return [o.value for o in map_bounded(sleep_one, [{"seconds": 0.1}], max_workers=1)]

    releaser = threading.Thread(target=free_later)
    from headroom import local_server

    monkeypatch.setattr(local_server, "_prepared", {local_server.api_url() or ""})
    releaser.start()
    state = waits(return_state=True)
    releaser.join()
    assert state.is_completed(), state.message
    _send_queued_logs()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    lines = [entry.message for entry in logs if "has waited" in entry.message]
    assert lines, [entry.message for entry in logs]
    assert "tag:test-one: 1/1 slots held, by no live task run" in lines[0]
