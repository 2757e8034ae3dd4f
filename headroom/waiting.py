"""What a task that waits for a slot is waiting for, and who holds it: said every ``LOG_EVERY_S``.

A task waits silently in two places: in Prefect's engine for a slot of its tag limit (before
its body is called) and in headroom for its share of ``memory-mb:<host>``. Either wait can be
long for good reasons; a wait on slots nobody will give back must at least be visible.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

LOG_EVERY_S = 30.0
_SHOWN = 5

log = logging.getLogger("headroom.waiting")


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
            from headroom.runs import live_filter

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
