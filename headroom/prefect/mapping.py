"""Many budgeted task runs at once (``map_bounded``) and one report of the items that failed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any
from uuid import UUID

from pydantic import Field

from headroom.errors import (
    OutputUnavailable,
)

MaxWorkers = Annotated[
    int, Field(ge=1, le=64, description="Tasks this run submits at once (local concurrency).")
]


@dataclass
class Outcome:
    """One mapped item: its arguments and either its value or its error."""

    item: dict[str, Any]
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def map_bounded(
    task: Any,
    items: Iterable[dict[str, Any]],
    *,
    max_workers: int,
    chunk_scale: float | None = 1.0,
    progress: bool = True,
) -> list[Outcome]:
    """Run ``task`` once per item with at most ``max_workers`` submitted at once.

    Tag limits stay the global cap; this keeps a run's own slots busy without flooding the
    server (Prefect 3.8 hands tag slots over slowly). Never raises for an item: each
    :class:`Outcome` carries its value or its error.
    """
    from prefect.artifacts import create_progress_artifact
    from prefect.futures import as_completed

    pending = list(items)
    outcomes = [Outcome(item) for item in pending]
    running: dict[Any, int] = {}
    following = 0
    finished = 0
    progress_id: UUID | None = None
    if progress and pending:
        try:
            progress_id = create_progress_artifact(  # type: ignore[assignment]
                0.0, description=f"{task.name}: items done"
            )
        except Exception:
            progress_id = None
    reported = 0
    while following < len(pending) or running:
        while following < len(pending) and len(running) < max_workers:
            extra = {} if chunk_scale is None else {"chunk_scale": chunk_scale}
            running[task.submit(**pending[following], **extra)] = following
            following += 1
        # Progress is reported after the next item is on its way, not before: a freed slot
        # never waits for an API call.
        if progress_id is not None and reported < finished:
            progress_id = _report_progress(progress_id, finished, len(pending))
            reported = finished
        future = next(as_completed(list(running)))
        index = running.pop(future)
        try:
            # The future's own result: with persistence off the server holds no data.
            outcomes[index].value = future.result()
        except Exception as error:  # noqa: BLE001 - one item's failure is its outcome
            outcomes[index].error = error
        finished += 1
    if progress_id is not None:
        _report_progress(progress_id, finished, len(pending))
    return outcomes


def _report_progress(progress_id: UUID, finished: int, total: int) -> UUID | None:
    """Update the progress artifact; None (stop reporting) when the server refuses."""
    from prefect.artifacts import update_progress_artifact

    try:
        update_progress_artifact(progress_id, 100.0 * finished / total)
    except Exception:
        return None
    return progress_id


@dataclass
class ItemFailures(Exception):
    """Some mapped items failed; the others finished. Names each failed item and why."""

    what: str
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{len(self.failures)} {self.what} failed:"]
        lines += [f"  {name}: {reason}" for name, reason in self.failures]
        return "\n".join(lines)


def raise_failures(outcomes: list[Outcome], what: str, name_of: Callable[[dict], str]) -> None:
    """After the good items are done, raise one error naming every failed item; an output
    that could not be written is raised alone, once (every item met the same fault)."""
    raise_output_fault(outcomes)
    failed = [
        (name_of(o.item), f"{type(o.error).__name__}: {o.error}")
        for o in outcomes
        if o.error is not None
    ]
    if failed:
        raise ItemFailures(what, failed)


def raise_output_fault(outcomes: Iterable[Outcome]) -> None:
    """Raise the first :class:`OutputUnavailable` among ``outcomes``, if any."""
    for outcome in outcomes:
        if isinstance(outcome.error, OutputUnavailable):
            raise outcome.error
