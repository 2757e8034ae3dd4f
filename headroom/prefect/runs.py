"""Which process runs each flow run, so a Running run whose process is gone can be told apart.

A flow-run process SIGKILLed together with its ephemeral server (the demo's Ctrl-\\, an OOM
kill of the whole job) leaves its run Running in the server's database for ever, and the
slots its tasks held stay taken: every later run then waits on them. Nothing on the server
can tell such a run from a live one, but the host that ran it can: the flow's on_running hook
records (host, pid, process start time) under the state directory, and the end hooks drop it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from headroom.state import runs_dir


def _record_path(flow_run_id: str) -> Path:
    return runs_dir() / f"{flow_run_id}.json"


def process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None when it is gone or a
    zombie: with the pid, it names one process even after the pid is reused."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.Error:
        return None


def same_process(pid: int, started: float | None) -> bool:
    """Whether ``pid`` still is the process that started at ``started``."""
    now = process_start(pid)
    return now is not None and started is not None and abs(now - float(started)) <= 0.01


def record_process(flow_run_id: str) -> None:
    """Note that this process, on this host, runs ``flow_run_id``."""
    path = _record_path(flow_run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    record = {"host": socket.gethostname(), "pid": pid, "start": process_start(pid)}
    temporary = path.with_name(f".{path.name}.{pid}")
    temporary.write_text(json.dumps(record))
    os.replace(temporary, path)


def forget_process(flow_run_id: str) -> None:
    _record_path(flow_run_id).unlink(missing_ok=True)


def gone(flow_run_ids: Iterable[str]) -> dict[str, str]:
    """Of these flow runs, those recorded on this host whose process no longer exists:
    {flow run id: what was found}. Runs with no record here (another host's, or a process
    that never reported) are left out: nothing is known of them."""
    host = socket.gethostname()
    found: dict[str, str] = {}
    for flow_run_id in flow_run_ids:
        try:
            record = json.loads(_record_path(str(flow_run_id)).read_text())
        except (OSError, ValueError):
            continue
        if record.get("host") != host:
            continue
        pid = int(record.get("pid", 0))
        if pid and not same_process(pid, record.get("start")):
            found[str(flow_run_id)] = f"its process (pid {pid} on {host}) is gone"
    return found


def live_filter() -> Any:
    """Flow runs that are Running or Cancelling."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    return FlowRunFilter(
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.CANCELLING])
        )
    )
