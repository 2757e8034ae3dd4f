"""A served deployment whose flow-run process is SIGKILLed is re-run with a smaller scale."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from headroom.prefect import RERUN_TAG

ROOT = Path(__file__).resolve().parents[2]


def _wait(what: str, probe, timeout_s: float = 90.0, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.mark.slow
def test_sigkilled_served_run_is_rerun_with_half_chunk_scale(prefect_harness, tmp_path):
    pidfile = tmp_path / "flow.pid"
    runner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tests.headroom.crash_flow import crash_target;"
            "crash_target.serve(name='crash-test', limit=2)",
        ],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        start_new_session=True,
        stdout=open(tmp_path / "runner.log", "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        with get_client(sync_client=True) as client:

            def deployment():
                try:
                    return client.read_deployment_by_name("crash-target/crash-test")
                except Exception:
                    return None

            _wait("the served deployment", deployment)
            first = run_deployment(
                "crash-target/crash-test",
                parameters={"pidfile": str(pidfile), "seconds": 120, "chunk_scale": 1.0},
                timeout=0,
            )
            first_pid = Path(f"{pidfile}.1")
            try:
                _wait("the flow-run process", lambda: first_pid.exists() and first_pid.read_text())
            except AssertionError:
                print((tmp_path / "runner.log").read_text()[-5000:])
                raise
            os.kill(int(first_pid.read_text()), signal.SIGKILL)

            crashed = _wait(
                "the Crashed state",
                lambda: (r := client.read_flow_run(first.id)).state.is_crashed() and r,
                timeout_s=60,
            )
            assert crashed.state.is_crashed()

            def rerun():
                runs = client.read_flow_runs()
                return next(
                    (r for r in runs if f"{RERUN_TAG}-1" in r.tags and r.id != first.id), None
                )

            second = _wait("the re-run", rerun, timeout_s=60)
            assert second.parameters["chunk_scale"] == 0.5
            assert second.deployment_id == first.deployment_id
            assert "rerun1" in second.name
            # the re-run really runs, at the halved scale
            _wait("the re-run's process", lambda: Path(f"{pidfile}.0.5").exists())
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
