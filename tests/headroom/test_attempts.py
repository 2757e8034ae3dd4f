"""One task run's attempts: the chunk after a retry and whether a retry is due."""

from __future__ import annotations

from headroom.errors import OutOfMemory
from headroom.prefect.attempts import AttemptLog, OpenLogs, failed_outcome
from headroom.prefect.report import Attempt


def _attempt(number: int, chunk: int, outcome: str) -> Attempt:
    return Attempt("t", "run", number, chunk, "", 300.0, 350.0, 0.0, 1.0, outcome)


def test_last_oom_is_not_reset_by_a_later_transient_error():
    log = AttemptLog("run", oom_retries=3, retries=1)
    log.record(_attempt(1, 400, "watchdog"))
    log.record(_attempt(2, 200, "transient:ConnectionError"))
    assert log.last_oom() is log.attempts[0]
    log.record(_attempt(3, 200, "allocator"))
    assert log.last_oom() is log.attempts[2]


def test_retries_follow_the_count_of_each_kind():
    log = AttemptLog("run", oom_retries=1, retries=1)
    log.record(_attempt(1, 400, "watchdog"))
    assert log.retry_due()
    log.record(_attempt(2, 200, "transient:ConnectionError"))
    assert log.retry_due()  # the first transient error, though an OOM came before
    log.record(_attempt(3, 200, "transient:ConnectionError"))
    assert not log.retry_due()
    other = AttemptLog("run2", oom_retries=1, retries=1)
    other.record(_attempt(1, 400, "watchdog"))
    other.record(_attempt(2, 200, "gpu"))
    assert not other.retry_due()
    failed = AttemptLog("run3", oom_retries=4, retries=4)
    failed.record(_attempt(1, 400, "ValueError"))
    assert not failed.retry_due()


def test_a_log_stays_open_only_while_a_retry_is_due():
    logs = OpenLogs()
    log = logs.open("run", oom_retries=1, retries=0)
    log.record(_attempt(1, 400, "watchdog"))
    assert logs.settle(log) and logs.is_open("run")
    assert logs.open("run", 1, 0) is log  # the next attempt finds the same log
    log.record(_attempt(2, 200, "ok"))
    assert not logs.settle(log) and not logs.is_open("run")
    assert logs.open("run", 1, 0) is not log


def test_failed_outcome_names_kind_or_type():
    assert failed_outcome(OutOfMemory("gpu"), (ConnectionError,)) == "gpu"
    assert failed_outcome(ConnectionError("x"), (ConnectionError,)) == "transient:ConnectionError"
    assert failed_outcome(ValueError("x"), (ConnectionError,)) == "ValueError"
