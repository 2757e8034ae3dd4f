"""Setup against the real server: leaked slots given back, the pool's heartbeat pinned, the
zombie-run automation's window kept by the set-up of one more host."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from deployments.production.automations import ensure_automations
from deployments.setup import (
    FLOW_HEARTBEAT_S,
    HEARTBEAT_VARIABLE,
    WORK_POOL,
    apply_limits,
    ensure_work_pool,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_setup_gives_back_slots_that_no_run_holds():
    plan = apply_limits()
    leaked = "tag:mitma-download"
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(leaked, GlobalConcurrencyLimitUpdate(active_slots=3))
        assert client.read_global_concurrency_limit_by_name(leaked).active_slots == 3
    assert apply_limits() == plan  # idempotent: same limits, same sizes
    with get_client(sync_client=True) as client:
        for name, size in plan.items():
            limit = client.read_global_concurrency_limit_by_name(name)
            assert (limit.limit, limit.active_slots) == (size, 0), name


def test_the_pool_pins_the_heartbeat_of_its_flow_runs():
    ensure_work_pool()
    ensure_work_pool()  # an existing pool is left as it is
    with get_client(sync_client=True) as client:
        template = client.read_work_pool(WORK_POOL).base_job_template
    env = template["variables"]["properties"]["env"]["default"]
    assert env == {HEARTBEAT_VARIABLE: str(FLOW_HEARTBEAT_S)}
    assert template["job_configuration"]["env"] == "{{ env }}"


def test_another_hosts_setup_keeps_the_automation_window(monkeypatch):
    monkeypatch.delenv("HEADROOM_ZOMBIE_AFTER_S", raising=False)
    name = "headroom-test: zombie window"
    first = ensure_automations(within_s=120, name=name)
    try:
        assert ensure_automations(name=name) == first
        with get_client(sync_client=True) as client:
            (automation,) = client.read_automations_by_name(name=name)
        assert automation.trigger.within.total_seconds() == 120
        ensure_automations(within_s=95, name=name)  # an explicit window still wins
        with get_client(sync_client=True) as client:
            (automation,) = client.read_automations_by_name(name=name)
        assert automation.trigger.within.total_seconds() == 95
    finally:
        with get_client(sync_client=True) as client:
            client.delete_automation(first)


def test_a_run_whose_process_was_killed_is_crashed_by_setup(tmp_path):
    # The flow-run process dies with SIGKILL (with an ephemeral server, nothing is left to
    # report it): its run stays Running until setup finds its process gone on this host.
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from deployments.setup import crash_dead_runs

    pidfile = tmp_path / "flow.pid"
    script = (
        "import os, sys, time\n"
        "from prefect import flow\n"
        "from headroom.prefect import FLOW_HOOKS\n"
        "@flow(name='headroom-test-killed', **FLOW_HOOKS)\n"
        "def killed(pidfile: str) -> None:\n"
        "    open(pidfile, 'w').write(str(os.getpid()))\n"
        "    time.sleep(120)\n"
        "killed(sys.argv[1])\n"
    )
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen([sys.executable, "-c", script, str(pidfile)], cwd=root)
    try:
        deadline = time.monotonic() + 90
        while not pidfile.exists() or not pidfile.read_text():
            assert process.poll() is None and time.monotonic() < deadline, "the flow never ran"
            time.sleep(0.1)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    with get_client(sync_client=True) as client:
        (flow_run,) = [
            r
            for r in client.read_flow_runs()
            if r.name
            and r.state
            and r.state.is_running()
            and client.read_flow(r.flow_id).name == "headroom-test-killed"
        ]
        assert crash_dead_runs(client) == [str(flow_run.id)]
        state = client.read_flow_run(flow_run.id).state
        assert state.is_crashed() and "is gone" in state.message
        assert crash_dead_runs(client) == []  # once
