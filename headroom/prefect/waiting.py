"""What a task that waits for a slot is waiting for, and who holds it: said every ``LOG_EVERY_S``.

A task waits silently in two places: in Prefect's engine for a slot of its tag limit (before
its body is called) and in headroom for its share of ``memory-mb:<host>``. Either wait can be
long for good reasons; a wait on slots nobody will give back must at least be visible.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

LOG_EVERY_S = float(os.environ.get("HEADROOM_WAIT_LOG_S", "30"))
_SHOWN = 5

log = logging.getLogger("headroom.prefect.waiting")


def holders(client: Any, name: str) -> str:
    """``name``'s occupancy and, for a tag limit, the task runs (and their flow runs) holding
    it; for another limit, the flow runs that are live. Never raises: this is a log line."""
    try:
        limit = client.read_global_concurrency_limit_by_name(name)
        text = f"{name}: {limit.active_slots}/{limit.limit} slots held"
        if name.startswith("tag:"):
            held = client.read_concurrency_limit_by_tag(name[len("tag:") :]).active_slots
            runs = [_task_run_name(client, task_run_id) for task_run_id in held[:_SHOWN]]
            who = ", ".join(runs) if runs else "no live task run (slots of a dead run?)"
        else:
            from headroom.prefect.runs import live_filter

            live = client.read_flow_runs(flow_run_filter=live_filter(), limit=_SHOWN)
            who = "live flow runs " + (", ".join(r.name for r in live) if live else "none")
        return f"{text}, by {who}"
    except Exception as exc:  # noqa: BLE001 - a diagnosis must never fail the wait
        return f"{name}: holders unknown ({type(exc).__name__}: {exc})"


def _task_run_name(client: Any, task_run_id: Any) -> str:
    task_run = client.read_task_run(task_run_id)
    flow_run = client.read_flow_run(task_run.flow_run_id) if task_run.flow_run_id else None
    return f"{task_run.name} ({flow_run.name})" if flow_run else task_run.name


def log_waiting(what: str, waited_s: float, names: Iterable[str]) -> None:
    """One line: ``what`` has waited ``waited_s`` for slots of ``names``, and who holds them."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        described = "; ".join(holders(client, name) for name in names)
    _logger().warning("%s has waited %.0f s for slots: %s", what, waited_s, described)


def _logger() -> Any:
    """The run logger where there is a run (the UI shows it), else this module's."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run
        return log


_watchers: dict[str, threading.Event] = {}


def watch_tag_waits(flow_run: Any) -> None:
    """Start a thread that, every ``LOG_EVERY_S``, says in ``flow_run``'s log which of its task
    runs have waited that long in Prefect's engine for a tag slot, and who holds the slots.

    The engine's wait happens before the task's body, where headroom has no code; so the thread
    reads the flow run's Pending task runs from the server and keeps those whose tag limits are
    full. It stops with :func:`stop_watching` (the flow's final-state hooks) or with the process.
    """
    key = str(flow_run.id)
    if key in _watchers:
        return
    stop = _watchers[key] = threading.Event()
    threading.Thread(
        target=_watch, args=(flow_run, stop), name=f"headroom-waits-{key[:8]}", daemon=True
    ).start()


def stop_watching(flow_run: Any) -> None:
    stop = _watchers.pop(str(flow_run.id), None)
    if stop is not None:
        stop.set()


def _watch(flow_run: Any, stop: threading.Event) -> None:
    from prefect.client.orchestration import get_client
    from prefect.logging.loggers import flow_run_logger

    logger = flow_run_logger(flow_run)
    while not stop.wait(LOG_EVERY_S):
        try:
            with get_client(sync_client=True) as client:
                for line in waiting_task_runs(client, flow_run.id, LOG_EVERY_S):
                    logger.warning(line)
        except Exception as exc:  # noqa: BLE001 - a diagnosis must never fail the run
            log.debug("wait watch of %s: %s", flow_run.id, exc)


def waiting_task_runs(client: Any, flow_run_id: Any, at_least_s: float) -> list[str]:
    """One line per task run of ``flow_run_id`` Pending for ``at_least_s`` or more with a full
    tag limit: what it waits for and who holds it."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    pending = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        task_run_filter=TaskRunFilter(
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.PENDING]))
        ),
    )
    now = datetime.now(UTC)
    lines = []
    for task_run in pending:
        since = task_run.state.timestamp if task_run.state else task_run.created
        waited = (now - since).total_seconds() if since else 0.0
        if waited < at_least_s:
            continue
        full = [f"tag:{tag}" for tag in task_run.tags if _full(client, f"tag:{tag}")]
        if full:
            described = "; ".join(holders(client, name) for name in full)
            lines.append(f"task {task_run.name} has waited {waited:.0f} s for slots: {described}")
    return lines


def _full(client: Any, name: str) -> bool:
    try:
        limit = client.read_global_concurrency_limit_by_name(name)
    except Exception:  # noqa: BLE001 - no such limit: nothing to wait for
        return False
    return bool(limit.active) and limit.active_slots >= limit.limit
