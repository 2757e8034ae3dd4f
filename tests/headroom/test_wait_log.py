"""A task that waits in Prefect's engine for a tag slot says so in its flow run's log, every
``HEADROOM_WAIT_LOG_S`` (30 s by default; 3 s here), naming the limit and the task run holding it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_task_waiting_on_a_tag_slot_says_what_holds_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "home"), "HEADROOM_WAIT_LOG_S": "3"}
    workdir = tmp_path / "pair"
    workdir.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "tests.headroom.wedge_flow", str(workdir), "20", "pair"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    lines = [line for line in log.splitlines() if "has waited" in line]
    assert lines, log[-3000:]
    # the waiter names its limit, that the limit is full, and the holding task run by name
    assert re.search(
        r"task hold-test-one-\S+ has waited \d+ s for slots: tag:test-one: 1/1 "
        r"slots held, by hold-test-one-\S+ \(\S+\)",
        lines[0],
    ), lines
    # said again while the wait lasts, not once
    assert len(lines) >= 2, lines
