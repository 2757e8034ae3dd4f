"""``served``: one ``python -m deployments.serve`` for the session (its own SQLite server,
UI, setup, deployments from prefect.yaml and a process worker), stopped by SIGTERM after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployments.ports import free_port
from headroom.prefect.runs import process_start

ROOT = Path(__file__).resolve().parents[2]
SERVED = ["oom-drill", "stream-stats-redis", "fraud-synth-weekly", "ml-fraud-model"]


@dataclass
class Served:
    api_url: str
    output: Path
    state_dir: Path

    def client_env(self) -> dict[str, str]:
        """The environment README tells a user to set for the prefect CLI."""
        return {**os.environ, "PREFECT_API_URL": self.api_url}


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_HOME=str(base / "home"), PREFECT_WORKER_QUERY_SECONDS="2")
    output = base / "serve.out"
    argv = [sys.executable, "-m", "deployments.serve", "--port", str(port)]
    argv += ["--state-dir", str(base / "state"), "--only", *SERVED]
    with open(output, "wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 300
        while "serving: UI" not in output.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve did not come up:\n{output.read_text()[-4000:]}")
            time.sleep(1)
        yield Served(f"http://127.0.0.1:{port}/api", output, base / "state")
    finally:
        children = [
            int(p.read_text().split()[0]) for p in (base / "state").glob("*.pid") if p.exists()
        ]
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, output.read_text()[-3000:]
    # SIGTERM stopped what serve started: its server and worker are gone.
    assert children and all(process_start(pid) is None for pid in children), children
