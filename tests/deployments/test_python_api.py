"""README "Python API": a script calls each workload's flow on a fresh machine.

A fresh PREFECT_HOME, no PREFECT_API_URL (the embedded default: a temporary server on SQLite in
PREFECT_HOME) and no ``python -m deployments.setup``: the first run creates the limits it needs
from deployments/limits.toml, says so once, and all five workloads complete.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from headroom.limits import Limits, memory_limit_name

ROOT = Path(__file__).resolve().parents[2]
CREATED = "created the missing concurrency limits"


@pytest.mark.slow
def test_a_script_calls_each_workload_on_a_fresh_prefect_home_without_setup(tmp_path):
    home = tmp_path / "prefect-home"
    env = {
        key: value
        for key, value in os.environ.items()
        # the user's defaults, not the test session's server, limits file or log level
        if not key.startswith(("PREFECT_API_", "PREFECT_LOGGING_")) and key != "HEADROOM_LIMITS"
    }
    env.update(
        PREFECT_HOME=str(home),
        HEADROOM_STATE_DIR=str(tmp_path / "headroom"),
        HEADROOM_MEMORY_LIMIT="3GiB",
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "tests.deployments.python_api_script", str(workdir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["fraud_synth"] == 60_000
    assert result["mitma_od"] > 0 and result["iso_lmp"] > 0
    assert result["stream_stats"] == 20_000
    assert (workdir / "models" / "fraud-model" / result["ml_pipeline"]).is_dir()

    # The limits were made by the first run, from deployments/limits.toml, and said once.
    assert output.count(CREATED) == 1, output[-6000:]
    declared = Limits.load(ROOT / "deployments" / "limits.toml")
    expected = {f"tag:{tag}": spec.slots for tag, spec in declared.tags.items()}
    with sqlite3.connect(home / "prefect.db") as db:
        stored = dict(db.execute('SELECT name, "limit" FROM concurrency_limit_v2').fetchall())
    assert {name: stored.get(name) for name in expected} == expected
    assert stored.get(memory_limit_name(), 0) > 0
    assert "does not exist on this Prefect server" not in output


def _an_address_of_this_machine_not_loopback() -> str | None:
    import psutil

    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


@pytest.mark.slow
def test_against_a_server_on_another_address_a_missing_limit_stays_an_error(tmp_path):
    from deployments.ports import free_port
    from deployments.production.server import ServerSettings, start_server, stop

    address = _an_address_of_this_machine_not_loopback()
    if address is None:
        pytest.skip("this machine has no IPv4 address besides loopback")
    settings = ServerSettings(
        host=address,
        port=free_port(),
        state_dir=tmp_path / "server",
        auth_string="user:a-test-password",
        ui=False,
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_API_", "PREFECT_LOGGING_")) and key != "HEADROOM_LIMITS"
    }
    env.update(
        PREFECT_HOME=str(tmp_path / "client-home"),
        PREFECT_API_URL=settings.api_url,
        PREFECT_API_AUTH_STRING="user:a-test-password",
        HEADROOM_STATE_DIR=str(tmp_path / "headroom"),
    )
    try:
        start_server(settings, None)
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "from flows.oom_drill.flow import oom_drill; oom_drill(parts=1)",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        limits = httpx.post(
            f"{settings.api_url}/v2/concurrency_limits/filter",
            json={},
            auth=("user", "a-test-password"),
            timeout=30,
        )
    finally:
        stop(settings)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert f"the memory limit '{memory_limit_name()}' does not exist" in output, output[-3000:]
    assert "run `python -m deployments.setup` on this host first" in output
    assert CREATED not in output
    assert limits.raise_for_status().json() == []  # nothing was created on that server
