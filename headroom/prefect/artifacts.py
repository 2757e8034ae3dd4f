"""Attempt tables published as Prefect artifacts, off the task's path (one writer thread)."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from headroom.prefect.report import attempts_key

if TYPE_CHECKING:
    from headroom.prefect.task import BudgetedSpec

# Attempts tables are published in order by one thread (see publish_attempts).
_artifacts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headroom-artifacts")


def publish_attempts(spec: BudgetedSpec, rows: list[dict[str, Any]]) -> None:
    """Publish the run's attempts table from a background thread, in this task's context: the
    request is then off the path between the body's end and the next task."""
    import contextvars

    description = f"{spec.name}: attempts (tag {spec.tag})"
    key = attempts_key(spec.name)
    if _in_dask_worker():  # no flow-end flush reaches a worker's queue: publish now
        _create_table(rows, key, description)
        return
    try:
        _artifacts.submit(contextvars.copy_context().run, _create_table, rows, key, description)
    except RuntimeError:  # the interpreter is shutting down: no thread to hand it to
        _create_table(rows, key, description)


def _in_dask_worker() -> bool:
    import sys

    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def _create_table(rows: list[dict[str, Any]], key: str, description: str) -> None:
    from prefect.artifacts import create_table_artifact

    try:
        create_table_artifact(rows, key=key, description=description)
    except Exception:  # an artifact must never fail the work
        pass


def flush_artifacts(timeout_s: float = 30.0) -> None:
    """Wait until every attempts table asked for so far is published (at a flow's end; at exit
    the executor publishes what is queued before the interpreter goes)."""
    with contextlib.suppress(Exception):  # the interpreter is shutting down, or it took long
        _artifacts.submit(lambda: None).result(timeout_s)


def _new_artifacts_executor() -> None:
    """In a forked child the parent's publishing thread does not exist: a new executor."""
    global _artifacts
    _artifacts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headroom-artifacts")


os.register_at_fork(after_in_child=_new_artifacts_executor)
