"""Nothing a dead run leaves wedges the next one on the embedded default: scripts on a fresh
PREFECT_HOME, each with its own temporary server, no setup in between.

A failed run, then three runs SIGKILLed in a row while they hold the only slot of their tag
(and memory slots): a plain run of the same flow then completes within 2 minutes, the limits
it needed having been created by the first run itself, and no process of a killed run (its
temporary server, its guarded child) is left 10 s after the kill.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home)  # a fresh machine: no limits, no runs
    env["PREFECT_LOGGING_LEVEL"] = "INFO"
    return env


def _start(workdir: Path, home: Path, seconds: float, *extra: str) -> subprocess.Popen:
    workdir.mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "tests.headroom.wedge_flow", str(workdir), str(seconds), *extra],
        cwd=ROOT,
        env=_script_env(home),
        stdout=open(workdir / "script.log", "w"),
        stderr=subprocess.STDOUT,
    )


def _wait_holding(script: subprocess.Popen, workdir: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not (workdir / "holding").exists():
        if script.poll() is not None or time.monotonic() > deadline:
            log = (workdir / "script.log").read_text()[-3000:]
            raise AssertionError(f"the run never held its slot:\n{log}")
        time.sleep(0.2)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_failed_and_killed_scripts_never_wedge_the_next_run(tmp_path):
    home = tmp_path / "prefect-home"
    failed = _start(tmp_path / "failed", home, 0.5, "fail")
    assert failed.wait(timeout=180) != 0
    assert "failed on purpose" in (tmp_path / "failed" / "script.log").read_text()
    # A run that ends (here: Failed) gives its slots back before its temporary server stops:
    # what the server kept on disk shows none held.
    with sqlite3.connect(home / "prefect.db") as db:
        held = db.execute(
            "SELECT name, active_slots FROM concurrency_limit_v2 WHERE active_slots > 0"
        ).fetchall()
    assert held == [], held

    left_behind: list[psutil.Process] = []
    for attempt in range(3):
        workdir = tmp_path / f"killed-{attempt}"
        script = _start(workdir, home, 600)
        _wait_holding(script, workdir)
        tree = psutil.Process(script.pid).children(recursive=True)
        # the temporary server (headroom's app, or Prefect's with HEADROOM_PREFECT_APP=0)
        assert any("create_app" in " ".join(p.cmdline()) for p in tree)
        os.kill(script.pid, signal.SIGKILL)  # as the OOM killer does
        script.wait()
        left_behind += tree
    # the watchdog polls every 0.5 s and gives the server 2 s to stop before SIGKILL
    deadline = time.monotonic() + 10
    while (alive := [p for p in left_behind if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]

    plain = _start(tmp_path / "plain", home, 0.5)
    try:
        assert plain.wait(timeout=120) == 0, (tmp_path / "plain" / "script.log").read_text()
    finally:
        if plain.poll() is None:
            plain.kill()
    log = (tmp_path / "plain" / "script.log").read_text()
    assert "slots held by no run: giving them back" in log, log[-3000:]
    assert "is gone: marking it Crashed" in log
