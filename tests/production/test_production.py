"""The production stack on the real PostgreSQL: deploy and run, crashed and zombie runs, slot
leases, API auth, Dask scale-out. Slow tests share one stack (tests/production/conftest.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from deployments.production import server
from deployments.production.pg import PgSettings, create_database, drop_database
from headroom.prefect import RERUN_TAG
from headroom.prefect.reruns import rerun_parameters
from tests.conftest import require_service
from tests.production.conftest import UUID_LINE, ZOMBIE_AFTER_S, Stack, wait_for


def test_bind_policy_and_settings_are_checked():
    with pytest.raises(server.UnsafeBind, match="PREFECT_SERVER_API_AUTH_STRING"):
        server.ServerSettings(host="0.0.0.0")
    with pytest.raises(server.UnsafeBind):
        server.ServerSettings(host="prefect.example.org")
    exposed = server.ServerSettings(host="0.0.0.0", auth_string="ops:secret")
    assert exposed.client_env()["PREFECT_API_AUTH_STRING"] == "ops:secret"
    assert server.ServerSettings(host="::1").api_url == "http://[::1]:4200/api"
    with pytest.raises(ValueError, match="must exceed the heartbeat"):
        server.ServerSettings(zombie_after_s=30)
    with pytest.raises(ValueError, match="HEADROOM_PG_DATABASE"):
        PgSettings(database='prefect"; DROP DATABASE postgres; --')
    pg = PgSettings(password="p@ss:w/rd")
    assert pg.connection_url().startswith("postgresql+asyncpg://prefect:p%40ss%3Aw%2Frd@")
    assert "p@ss" not in pg.connection_url(masked=True) and "p@ss" not in repr(pg)
    env = server.ServerSettings().server_env(pg)
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == pg.connection_url()
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in server.ServerSettings().client_env()


def test_start_refuses_a_role_without_password_unless_trust_is_declared(tmp_path, monkeypatch):
    monkeypatch.delenv("HEADROOM_PG_PASSWORD", raising=False)
    monkeypatch.delenv("HEADROOM_PG_TRUST", raising=False)
    monkeypatch.setenv("HEADROOM_PROD_DIR", str(tmp_path / "prod"))
    assert server.main(["start"]) == 2
    assert not (tmp_path / "prod" / "server.pid").exists()  # nothing was started


def test_pg_script_creates_role_and_database_idempotently_with_any_password():
    import asyncio

    import asyncpg

    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"headroom_test_pw_{os.getpid()}"
    awkward = 'it\'s "quoted"; DROP ROLE postgres; --'
    settings = PgSettings(database=name, user=name, password=awkward)

    async def role_and_owner() -> tuple[bool, str | None]:
        connection = await asyncpg.connect(settings.admin_dsn)
        try:
            has_password = await connection.fetchval(
                "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = $1", name
            )
            owner = await connection.fetchval(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", name
            )
            return bool(has_password), owner
        finally:
            await connection.close()

    try:
        assert create_database(settings) == {"role_created": True, "database_created": True}
        assert create_database(settings) == {"role_created": False, "database_created": False}
        assert asyncio.run(role_and_owner()) == (True, name)
    finally:
        drop_database(settings)
    assert asyncio.run(role_and_owner()) == (False, None)


@pytest.mark.slow
def test_server_refuses_unauthenticated_api_calls(stack: Stack):
    api = stack.settings.api_url
    assert httpx.post(f"{api}/flows/filter", json={}).status_code == 401
    wrong = server.auth_headers("headroom:wrong")
    assert httpx.post(f"{api}/flows/filter", json={}, headers=wrong).status_code == 401
    right = server.auth_headers(stack.settings.auth_string)
    assert httpx.post(f"{api}/flows/filter", json={}, headers=right).status_code == 200
    assert httpx.get(f"{api}/health").status_code == 200  # probes stay open, as Prefect allows
    report = server.status(stack.settings)
    assert report["healthy"] and report["server"] and report["worker-0"]


@pytest.mark.slow
def test_deployment_run_from_prefect_yaml_completes(stack: Stack):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.oom_drill.body import checksum_rows

    output = stack.cli(
        "deployment", "run", "oom-drill/oom-drill", "-p", "parts=2", "-p", "rows=3000"
    )
    run_id = UUID(UUID_LINE.search(output).group(1))
    with get_client(sync_client=True) as client:
        done = wait_for(
            "the oom-drill run to finish",
            lambda: (run := client.read_flow_run(run_id)).state.is_final() and run,
            timeout_s=120,
        )
        assert done.state.is_completed(), f"{done.state}\n{stack.log_tail()}"
        assert done.parameters["rows"] == 3000
        # The checksums depend only on (part, rows): the generator tells what the run logs.
        expected = [checksum_rows(part, 3000, rows_per_chunk=3000)["sha256"] for part in range(2)]
        wanted = f"checksums: {', '.join(expected)}"
        only_this_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))

        def logged() -> bool:
            entries = client.read_logs(log_filter=only_this_run, limit=200)
            return any(wanted in entry.message for entry in entries)

        wait_for(wanted, logged, timeout_s=20)


def _run_hold(stack: Stack, workdir: Path, tag: str, seconds: float = 60.0):
    from prefect.deployments import run_deployment

    workdir.mkdir()
    run = run_deployment(
        "hold-slots/hold",
        parameters={"workdir": str(workdir), "seconds": seconds, "tag": tag},
        timeout=0,
    )
    try:
        wait_for("the flow run to hold its slots", (workdir / "holding-1").exists, timeout_s=120)
    except AssertionError:
        raise AssertionError(stack.log_tail()) from None
    return run, int((workdir / "flow-1.pid").read_text())


def _runs_of(client, workdir: str) -> list:
    return [r for r in client.read_flow_runs(limit=200) if r.parameters.get("workdir") == workdir]


def _heartbeat_after_the_end(run) -> None:
    """Send the heartbeat a run's process sends, as if it reached the server after the run's
    final state (the race the issue saw: 4 runs became 6)."""
    import asyncio

    from prefect.events import Event
    from prefect.events.clients import get_events_client

    event = Event(
        event="prefect.flow-run.heartbeat",
        resource={
            "prefect.resource.id": f"prefect.flow-run.{run.id}",
            "prefect.resource.name": run.name,
        },
        related=[
            {"prefect.resource.id": f"prefect.flow.{run.flow_id}", "prefect.resource.role": "flow"},
            {
                "prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
                "prefect.resource.role": "deployment",
            },
        ],
    )

    async def send() -> None:
        async with get_events_client() as events:
            await events.emit(event)

    asyncio.run(send())


@pytest.mark.slow
def test_a_killed_run_is_rerun_once_and_a_finished_run_never(stack: Stack):
    """Two cases in one waiting window: a run that completes and whose last heartbeat reaches
    the server after its final state (never re-run), and a flow-run process SIGKILLed under a
    live worker (Crashed by the worker, re-run once by on_crashed, not again by the
    automation). Counted after the automation's window + 60 s."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        finished, _ = _run_hold(stack, stack.runs_dir / "finish-then-beat", "test-three", 1.0)
        done = wait_for(
            "the short run to finish",
            lambda: (run := client.read_flow_run(finished.id)).state.is_final() and run,
            timeout_s=60,
        )
        assert done.state.is_completed(), stack.log_tail()
        _heartbeat_after_the_end(done)
        beaten = time.monotonic()

        first, flow_pid = _run_hold(stack, stack.runs_dir / "kill-process", "test-three")
        killed = time.monotonic()
        os.kill(flow_pid, signal.SIGKILL)
        crashed = wait_for(
            "Crashed",
            lambda: (run := client.read_flow_run(first.id)).state.is_crashed() and run,
            timeout_s=30,
        )
        crashed_after = time.monotonic() - killed
        print(f"flow-run process SIGKILLed: Crashed after {crashed_after:.1f} s")
        assert "-9" in crashed.state.message or "SIGKILL" in crashed.state.message

        def rerun():
            return next((r for r in client.read_flow_runs() if f"{RERUN_TAG}-1" in r.tags), None)

        second = wait_for("the on_crashed re-run", rerun, timeout_s=30)
        assert second.deployment_id == first.deployment_id
        assert second.parameters["chunk_scale"] == 0.5
        assert second.parameters["workdir"] == first.parameters["workdir"]
        finished_rerun = wait_for(
            "the re-run to finish",
            lambda: (run := client.read_flow_run(second.id)).state.is_final() and run,
            timeout_s=90,
        )
        assert finished_rerun.state.is_completed(), stack.log_tail()

        # Long enough for the automation to fire on either case had it been going to.
        time.sleep(max(0.0, beaten + ZOMBIE_AFTER_S + 60 - time.monotonic()))
        assert [r.state.name for r in _runs_of(client, done.parameters["workdir"])] == ["Completed"]
        assert client.read_flow_run(done.id).state.is_completed()
        time.sleep(max(0.0, killed + ZOMBIE_AFTER_S + 60 - time.monotonic()))
        runs = _runs_of(client, first.parameters["workdir"])
        assert len(runs) == 2, [(r.name, r.state.name, r.parameters) for r in runs]


@pytest.mark.slow
def test_dask_cluster_runs_a_budgeted_map_with_worker_memory_caps(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    from distributed import Client, LocalCluster

    from deployments.production.dask_budget import PRELOAD, on_dask
    from headroom.budget import Budget
    from headroom.limits import Limits
    from tests.production.flows import squares

    # Dask worker processes inherit this environment: they talk to the stack's server.
    for key in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_HOME"):
        monkeypatch.setenv(key, stack.settings.client_env()[key])
    worker_limit = "400MiB"
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        memory_limit=worker_limit,
        preload=[PRELOAD],
        dashboard_address=None,
    ) as cluster:
        values = on_dask(squares, cluster.scheduler_address)(values=[1, 2, 3, 4, 5])
        with Client(cluster) as client:
            worker_pids = set(client.run(os.getpid).values())
    assert [v["square"] for v in values] == [v * v for v in [1, 2, 3, 4, 5]]
    limits = Limits.load()
    on_worker = limits.cap_mb("test-oom", Budget.detect(limit=worker_limit))
    here = limits.cap_mb("test-oom", Budget.detect())
    assert on_worker < here  # the worker's own memory limit decided the cap, not this host's
    assert {v["cap_mb"] for v in values} == {on_worker}
    assert not {v["pid"] for v in values} & (worker_pids | {os.getpid()})  # guarded children


@pytest.mark.slow
def test_lost_host_is_crashed_by_heartbeat_automation_and_slots_expire(stack: Stack):
    """Worker and flow-run process die together: no process is left to report anything."""
    from prefect.client.orchestration import get_client

    import headroom.prefect
    from headroom.limits import memory_limit_name

    first, flow_pid = _run_hold(stack, stack.runs_dir / "lose-host", "test-oom", seconds=600)
    worker_pid = server.running_pid(stack.settings, "worker-0")
    with get_client(sync_client=True) as client:
        held = client.read_global_concurrency_limit_by_name("tag:test-oom").active_slots
        assert held == 1
        killed = time.monotonic()
        os.killpg(worker_pid, signal.SIGKILL)
        os.killpg(os.getpgid(flow_pid), signal.SIGKILL)  # the flow run's own group (its child)

        crashed = wait_for(
            "the automation to mark the run Crashed",
            lambda: (run := client.read_flow_run(first.id)).state.is_crashed() and run,
            timeout_s=ZOMBIE_AFTER_S + 40,
            every_s=1,
        )
        assert "No heartbeat" in crashed.state.message
        crashed_after = time.monotonic() - killed
        assert crashed_after <= ZOMBIE_AFTER_S + 40

        def rerun():
            runs = client.read_flow_runs()
            return next(
                (
                    r
                    for r in runs
                    if r.parameters.get("workdir") == first.parameters["workdir"]
                    and r.id != first.id
                ),
                None,
            )

        again = wait_for("the automation's re-run", rerun, timeout_s=30)
        # The same run again (chunk_scale halved, as every re-run), for a surviving host; no
        # on_crashed re-run (nothing left to run it).
        assert again.parameters == rerun_parameters(first.parameters), [
            (r.name, r.parameters, r.tags, r.created) for r in client.read_flow_runs()
        ]

        def free(name: str) -> bool:
            return client.read_global_concurrency_limit_by_name(name).active_slots == 0

        # Task-run tag slots are leased for 60 s; the repossessor looks every 15 s.
        wait_for("the tag slot's lease to expire", lambda: free("tag:test-oom"), 120, 2)
        tag_freed_after = time.monotonic() - killed
        print(
            f"host lost: Crashed after {crashed_after:.1f} s, tag slot free after "
            f"{tag_freed_after:.1f} s"
        )
        assert tag_freed_after <= 90, tag_freed_after
        # headroom's memory slot: leased for MEMORY_LEASE_S (60 s), renewed while the task ran.
        lease_s = headroom.prefect.MEMORY_LEASE_S
        wait_for(
            "the memory slot's lease to expire",
            lambda: free(memory_limit_name()),
            max(5.0, lease_s + 30 - (time.monotonic() - killed)),
            2,
        )
        time.sleep(max(0.0, killed + crashed_after + 60 - time.monotonic()))
        runs = _runs_of(client, first.parameters["workdir"])
        assert len(runs) == 2, [(r.name, r.state.name, r.parameters) for r in runs]
