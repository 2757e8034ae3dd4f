"""The production stack for the session: a throw-away PostgreSQL database, a Prefect server on
it (with API auth), headroom's limits, the zombie-run automation, deployments and a worker.

Everything is started with deployments.production.server (the code behind scripts/prod) and
killed, process group by process group, even when a test fails.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.production import server
from deployments.production.pg import PgSettings, create_database, drop_database
from tests.conftest import free_port, require_service

HEARTBEAT_S = 30  # Prefect's minimum
ZOMBIE_AFTER_S = 45.0
UUID_LINE = re.compile(r"UUID: ([0-9a-f-]{36})")


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout_s
    while True:  # probes at least once, however short the time left
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@dataclass
class Stack:
    """A running production stack and the directories its runs write to."""

    settings: server.ServerSettings
    pg: PgSettings
    runs_dir: Path

    def cli(self, *args: str) -> str:
        """Run the prefect CLI against this server; its output."""
        result = subprocess.run(
            [server.PREFECT, *args],
            cwd=server.ROOT,
            env=self.settings.client_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def log_tail(self, name: str = "worker-0", chars: int = 4000) -> str:
        path = self.settings.state_dir / f"{name}.log"
        return path.read_text()[-chars:] if path.exists() else ""

    def kill_flow_runs(self) -> None:
        """SIGKILL the process group of every flow-run process the test flows recorded."""
        for pid_file in self.runs_dir.rglob("flow-*.pid"):
            try:
                os.killpg(os.getpgid(int(pid_file.read_text())), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


@pytest.fixture(scope="session")
def pg_settings() -> Iterator[PgSettings]:
    """A role and database of their own for this session, dropped afterwards."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"headroom_test_{secrets.token_hex(4)}"
    settings = PgSettings(database=name, user=name, password="")  # trust auth here
    create_database(settings)
    try:
        yield settings
    finally:
        drop_database(settings)


def _test_prefect_yaml(path: Path) -> Path:
    """prefect.yaml as it is, plus the test deployment of hold-slots (same pull step, pool)."""
    document = yaml.safe_load((server.ROOT / "prefect.yaml").read_text())
    document["deployments"] = [d for d in document["deployments"] if d["name"] == "oom-drill"]
    document["deployments"].append(
        {
            "name": "hold",
            "entrypoint": "tests/production/flows.py:hold_slots",
            "parameters": {"workdir": "/nonexistent", "seconds": 60},
            "work_pool": {"name": server.WORK_POOL, "work_queue_name": "default"},
            "tags": ["headroom-test"],
        }
    )
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def stack(pg_settings: PgSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Server (PostgreSQL, auth on) + limits + automation + deployments + one process worker."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    state = tmp_path_factory.mktemp("production")
    settings = server.ServerSettings(
        port=free_port(),
        state_dir=state / "run",
        auth_string=f"headroom:{secrets.token_hex(8)}",
        heartbeat_s=HEARTBEAT_S,
        zombie_after_s=ZOMBIE_AFTER_S,
        ui=False,
        extra_env={"PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_LOGGING_LEVEL": "INFO"},
    )
    built = Stack(settings, pg_settings, state / "runs")
    built.runs_dir.mkdir()
    try:
        server.start_server(settings, pg_settings)
        with temporary_settings(
            {PREFECT_API_URL: settings.api_url, PREFECT_API_AUTH_STRING: settings.auth_string}
        ):
            from deployments.production.automations import ensure_automations
            from deployments.setup import apply_limits, ensure_work_pool

            apply_limits()
            ensure_work_pool()
            ensure_automations(ZOMBIE_AFTER_S)
            server.deploy(settings, prefect_file=_test_prefect_yaml(state / "prefect.yaml"))
            server.start_workers(settings, 1)
            yield built
    finally:
        server.stop(settings)
        built.kill_flow_runs()
