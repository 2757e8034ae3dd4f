"""Schedules fire: prefect.yaml deployed to a fresh server (SQLite and PostgreSQL) gets its
scheduled runs from the server's scheduler, with no traceback in the server's log, and a
scheduled run is taken by a process worker and completes.

This is what proves the SQLAlchemy pin in constraints.txt: with SQLAlchemy 2.1 the scheduler
of prefect 3.8.8 fails on every loop (``Can't evaluate bulk DML statement``) and no run is
ever scheduled.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.production import server
from deployments.production.pg import PgSettings
from tests.conftest import free_port, require_service

DRILL = "oom-drill-every-10s"


def _wait_for(what: str, probe: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(1)


def _prefect_yaml(path: Path) -> tuple[Path, set[str]]:
    """prefect.yaml as it is, plus a small oom-drill on a 10 s interval (a run to complete);
    returns it and the names of the deployments that have an active schedule."""
    document = yaml.safe_load((server.ROOT / "prefect.yaml").read_text())
    drill = next(d for d in document["deployments"] if d["name"] == "oom-drill")
    document["deployments"].append(
        {
            **drill,
            "name": DRILL,
            "parameters": {**drill["parameters"], "parts": 1, "rows": 3000},
            "schedules": [{"interval": 10}],
        }
    )
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    scheduled = {
        d["name"]
        for d in document["deployments"]
        if any(s.get("active", True) for s in d.get("schedules") or [])
    }
    return path, scheduled


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_deployed_schedules_create_runs_and_a_worker_completes_one(database, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    pg = None
    if database == "postgresql":
        require_service("PostgreSQL", "127.0.0.1", 5432)
        name = f"headroom_test_{secrets.token_hex(4)}"
        pg = PgSettings(database=name, user=name, password="")
    settings = server.ServerSettings(
        port=free_port(),
        state_dir=tmp_path / "run",
        ui=False,
        extra_env={
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_LOGGING_LEVEL": "INFO",
        },
    )
    prefect_file, scheduled = _prefect_yaml(tmp_path / "prefect.yaml")
    try:
        server.start_server(settings, pg)
        server.run_setup(settings)
        server.deploy(settings, prefect_file=prefect_file)
        with temporary_settings({PREFECT_API_URL: settings.api_url}):
            with get_client(sync_client=True) as client:

                def runs_of(deployment: str, state: StateType | None = None) -> list[Any]:
                    only = DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
                    in_state = None
                    if state is not None:
                        in_state = FlowRunFilter(
                            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state]))
                        )
                    return client.read_flow_runs(
                        deployment_filter=only, flow_run_filter=in_state, limit=20
                    )

                def every_schedule_fired() -> bool:
                    return all(runs_of(name) for name in scheduled)

                _wait_for("a scheduled run of every scheduled deployment", every_schedule_fired, 90)
                for name in scheduled:
                    assert all(r.auto_scheduled for r in runs_of(name)), name
                assert not runs_of("oom-drill"), "an inactive schedule created runs"

                server.start_workers(settings, 1)

                def completed_drill() -> Any:
                    return next(iter(runs_of(DRILL, StateType.COMPLETED)), None)

                try:
                    done = _wait_for("a scheduled drill run to complete", completed_drill, 150)
                except AssertionError:
                    drill = [r.state.name for r in runs_of(DRILL)]
                    worker = (settings.state_dir / "worker-0.log").read_text()[-3000:]
                    raise AssertionError(f"drill runs {drill[:5]}; worker log:\n{worker}") from None
                assert done.auto_scheduled and done.parameters["rows"] == 3000
        server_log = (settings.state_dir / "server.log").read_text()
        assert "Traceback" not in server_log, server_log[-4000:]
        assert "bulk DML" not in server_log
    finally:
        server.stop(settings)
        if pg is not None:
            from deployments.production.pg import drop_database

            drop_database(pg)
