"""The demo's runs log to the Prefect database the UI reads, and its terminal stays quiet."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_have_their_logs_in_the_ui_database_and_the_terminal_shows_no_requests(
    tmp_path,
):
    env = {
        key: value
        for key, value in os.environ.items()
        # the demo's own embedded defaults, not the test session's server or log level
        if not key.startswith(("PREFECT_API_", "PREFECT_LOGGING_"))
    }
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        HEADROOM_STATE_DIR=str(tmp_path / "headroom"),
        HEADROOM_MEMORY_LIMIT="3GiB",
    )
    env.pop("HEADROOM_LIMITS", None)
    done = subprocess.run(
        [sys.executable, "-m", "deployments.demo", "--only", "oom_drill"]
        + ["--workdir", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "ok oom_drill" in output
    assert "HTTP Request" not in output and "Finished in state" not in output, output

    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        runs = db.execute(
            "SELECT flow_run.name, COUNT(log.id), "
            "SUM(log.message LIKE 'Finished in state Completed%' AND log.task_run_id IS NULL) "
            "FROM flow_run LEFT JOIN log ON log.flow_run_id = flow_run.id GROUP BY flow_run.id"
        ).fetchall()
    assert len(runs) == 2, runs  # the drill runs its flow twice
    for name, logs, finished in runs:
        # Each run's last record (its final state) arrived too: sent before the demo's
        # temporary server stopped.
        assert logs > 5 and finished == 1, (name, logs, finished)


def test_workloads_run_side_by_side_and_a_failure_does_not_stop_the_others(capsys):
    import threading
    import time

    from deployments.demo import run_side_by_side

    running: set[str] = set()
    together: list[set[str]] = []
    lock = threading.Lock()

    def run(name: str) -> str:
        with lock:
            running.add(name)
            together.append(set(running))
        time.sleep(0.2)
        with lock:
            running.discard(name)
        if name == "b":
            raise RuntimeError("b broke")
        return f"{name} done"

    failures = run_side_by_side(["a", "b", "c"], run, lanes=2)

    assert failures == 1
    assert max(len(s) for s in together) == 2  # two lanes busy at once, never three
    printed = capsys.readouterr().out
    assert "ok a (" in printed and "ok c (" in printed
    assert "FAILED b: RuntimeError: b broke" in printed


def test_one_lane_runs_the_workloads_one_after_another():
    from deployments.demo import run_side_by_side

    order: list[str] = []
    assert run_side_by_side(["x", "y"], lambda n: order.append(n) or n, lanes=1) == 0
    assert order == ["x", "y"]


def test_an_interrupt_starts_no_further_workload():
    import pytest

    from deployments.demo import run_side_by_side

    started: list[str] = []

    def run(name: str) -> str:
        started.append(name)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_side_by_side(["a", "b", "c"], run, lanes=1)
    assert started == ["a"]
