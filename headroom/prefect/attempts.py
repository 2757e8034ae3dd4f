"""The attempts of one budgeted task run, owned by one object.

A Prefect task run retries in the process that ran it, so a run's attempts are kept here, in
memory, between one attempt and the next: the next attempt's chunk follows the run's last
out-of-memory attempt, and whether there is a next attempt follows the counts of OOMs and of
declared transient errors so far. A log stays open while a retry is due and is closed as soon
as none is; the retry predicate only asks whether the run's log is still open.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from headroom.errors import OutOfMemory
from headroom.prefect.report import Attempt

OOM_KINDS = frozenset(OutOfMemory.KINDS)
TRANSIENT = "transient:"
"""Prefix of the outcome of an attempt that failed with an error declared transient."""


def failed_outcome(exc: BaseException, transient: tuple[type[BaseException], ...]) -> str:
    """The outcome recorded for an attempt that raised ``exc``: an OutOfMemory's kind, else
    the error's type name, marked when the task declared that type transient."""
    if isinstance(exc, OutOfMemory):
        return exc.kind
    return (TRANSIENT if isinstance(exc, transient) else "") + type(exc).__name__


@dataclass
class AttemptLog:
    """The attempts of one task run so far, and the retry rule of its task."""

    task_run_id: str
    oom_retries: int
    retries: int
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def next_number(self) -> int:
        """The number of the attempt about to start (1 for the first)."""
        return len(self.attempts) + 1

    def last_oom(self) -> Attempt | None:
        """The latest attempt that ran out of memory with a chunk size, or None. Attempts
        after it that failed for other reasons (a dropped connection) do not reset it."""
        for attempt in reversed(self.attempts):
            if attempt.outcome in OOM_KINDS and attempt.chunk:
                return attempt
        return None

    def record(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    def retry_due(self) -> bool:
        """Whether the last attempt's failure earns another attempt: an OOM while the run has
        had at most ``oom_retries`` of them, a transient error likewise with ``retries``."""
        if not self.attempts:
            return False
        last = self.attempts[-1].outcome
        if last in OOM_KINDS:
            return sum(a.outcome in OOM_KINDS for a in self.attempts) <= self.oom_retries
        if last.startswith(TRANSIENT):
            return sum(a.outcome.startswith(TRANSIENT) for a in self.attempts) <= self.retries
        return False

    def rows(self) -> list[dict[str, object]]:
        """The rows of the run's attempts table."""
        return [a.row() for a in self.attempts]


class OpenLogs:
    """The attempt logs of this process's task runs that have an attempt to come."""

    def __init__(self) -> None:
        self._logs: dict[str, AttemptLog] = {}
        self._lock = threading.Lock()

    def open(self, task_run_id: str, oom_retries: int, retries: int) -> AttemptLog:
        """The run's log: the one left open by its previous attempt, else a new one."""
        with self._lock:
            log = self._logs.get(task_run_id)
            if log is None:
                log = self._logs[task_run_id] = AttemptLog(task_run_id, oom_retries, retries)
            return log

    def close(self, task_run_id: str) -> None:
        """No attempt of the run is to come: forget its log."""
        with self._lock:
            self._logs.pop(task_run_id, None)

    def settle(self, log: AttemptLog) -> bool:
        """After an attempt: keep the log open if a retry is due, else close it. Returns
        whether a retry is due."""
        due = log.retry_due()
        if not due:
            self.close(log.task_run_id)
        return due

    def is_open(self, task_run_id: str) -> bool:
        """Whether the run's last attempt left a retry due (the task's retry predicate)."""
        with self._lock:
            return task_run_id in self._logs
