"""The guard with real child processes that really exceed their caps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headroom import ChildFailed, GuardTimeout, OutOfMemory, run_guarded, run_guarded_measured
from headroom.prefect.runs import process_start
from tests.headroom import workers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spares_only(monkeypatch):
    """The spare path, for bodies a fork server would otherwise run
    (headroom.isolation.forkserver)."""
    from headroom.isolation import forkserver

    monkeypatch.setenv(forkserver.ENV_FORK, "0")


def test_returns_the_value():
    assert run_guarded(workers.add, 2, 3, cap_mb=200) == 5


def test_over_cap_child_is_killed_near_the_cap_and_parent_goes_on():
    with pytest.raises(OutOfMemory) as caught:
        run_guarded(workers.allocate, 2000, 50, cap_mb=300)
    error = caught.value
    assert error.kind == "watchdog"
    assert error.cap_mb == 300
    assert 300 < error.peak_mb < 300 * 1.15
    # the parent is healthy and the next call works
    assert run_guarded(workers.allocate, 100, 50, cap_mb=300) == 2


def test_sigkill_not_sent_by_us_is_oom_killer():
    with pytest.raises(OutOfMemory) as caught:
        run_guarded(workers.kill_self, cap_mb=200)
    assert caught.value.kind == "oom-killer"


def test_memory_error_is_allocator():
    with pytest.raises(OutOfMemory) as caught:
        run_guarded(workers.raise_memory_error, cap_mb=200)
    assert caught.value.kind == "allocator"


def test_real_duckdb_out_of_memory_is_allocator():
    with pytest.raises(OutOfMemory) as caught:
        run_guarded(workers.duckdb_big_sort, "32MiB", cap_mb=2000)
    assert caught.value.kind == "allocator"
    assert "Out of Memory" in str(caught.value)


def test_value_error_comes_back_as_value_error_with_child_traceback():
    with pytest.raises(ValueError, match="bad line 3") as caught:
        run_guarded(workers.raise_value_error, "bad line 3", cap_mb=200)
    assert any("raise_value_error" in note for note in caught.value.__notes__)


def test_timeout_kills_a_hung_child():
    started = time.monotonic()
    with pytest.raises(GuardTimeout):
        run_guarded(workers.sleep_forever, cap_mb=200, timeout_s=1.0)
    assert time.monotonic() - started < 10


def test_lambda_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="not importable"):
        run_guarded(lambda: 1, cap_mb=100)


def test_crash_without_result_is_child_failed():
    with pytest.raises(ChildFailed, match="signal"):
        run_guarded("os:abort", cap_mb=100)


def test_measured_reports_peak_and_base():
    result = run_guarded_measured(workers.allocate, 200, 50, cap_mb=1000)
    assert result.value == 4
    assert 190 < result.peak_mb < 320
    assert 0 < result.base_mb < 100


def test_killing_the_parent_kills_the_child(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from headroom import run_guarded\n"
        f"run_guarded('tests.headroom.workers:spawn_and_wait', {str(pidfile)!r}, cap_mb=200)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline, "the guarded child never started"
        time.sleep(0.05)
    child_pid = int(pidfile.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while process_start(child_pid) is not None:
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.05)


def test_the_child_knows_its_cap():
    from headroom import current_cap_mb, duckdb_share

    assert run_guarded(current_cap_mb, cap_mb=123) == 123
    assert run_guarded(duckdb_share, 0.5, cap_mb=1000) == "500MiB"
    assert current_cap_mb() is None  # not inside a guarded child


def test_the_child_imports_what_the_parent_can_even_with_pythonpath_set(tmp_path, monkeypatch):
    # A body in a folder only the parent's sys.path knows (a script's own directory), while
    # PYTHONPATH names something else: the child must still find the body's module.
    (tmp_path / "local_bodies.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "elsewhere"))
    import local_bodies

    assert run_guarded(local_bodies.triple, 7, cap_mb=200) == 21


@pytest.mark.usefixtures("spares_only")
def test_a_call_runs_in_a_child_started_ahead_of_it():
    run_guarded(workers.add, 1, 1, cap_mb=200)  # leaves a spare behind
    time.sleep(0.5)
    asked = time.time()
    assert run_guarded(workers.started_at, cap_mb=200) < asked - 0.2


@pytest.mark.usefixtures("spares_only")
def test_calls_ending_together_each_find_a_child_started_ahead():
    from concurrent.futures import ThreadPoolExecutor

    def wave() -> list[float]:
        with ThreadPoolExecutor(3) as pool:
            return list(pool.map(lambda _: run_guarded(workers.started_at, cap_mb=200), range(3)))

    def spares_of_workers() -> int:
        return sum(p.cmdline()[-1] == workers.__name__ for p in _waiting_children())

    wave()  # three calls side by side: three spares asked for
    time.sleep(1.0)
    assert spares_of_workers() == 3
    asked = time.time()
    assert all(started < asked - 0.2 for started in wave())
    time.sleep(1.0)
    assert spares_of_workers() == 3  # replaced, not more


@pytest.mark.usefixtures("spares_only")
def test_a_spare_never_runs_a_call_with_another_environment(monkeypatch):
    run_guarded(workers.add, 1, 1, cap_mb=200)  # a spare with the environment of now
    monkeypatch.setenv("HEADROOM_TEST_MARK", "after the spare started")
    assert run_guarded(workers.environment_value, "HEADROOM_TEST_MARK", cap_mb=200) == (
        "after the spare started"
    )


def _waiting_children() -> list:
    import psutil

    return [
        p
        for p in psutil.Process().children()
        # Zombies: orphans of other tests' killed processes, handed to this one (a subreaper).
        if p.status() != psutil.STATUS_ZOMBIE
        and p.cmdline()[-3:-1] == ["headroom.isolation.child", "--wait"]
    ]


@pytest.mark.usefixtures("spares_only")
def test_spares_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("HEADROOM_SPARE_CHILD", "0")
    assert run_guarded(workers.add, 1, 1, cap_mb=200) == 2
    assert _waiting_children() == []


@pytest.mark.usefixtures("spares_only")
def test_a_spare_killed_from_outside_is_replaced_not_taken_for_an_oom():
    run_guarded(workers.add, 1, 1, cap_mb=200)
    (waiting,) = _waiting_children()
    waiting.kill()
    waiting.wait(5)
    assert run_guarded(workers.add, 2, 3, cap_mb=200) == 5


@pytest.mark.usefixtures("spares_only")
def test_a_spare_that_dies_as_its_call_is_handed_is_replaced(monkeypatch):
    # The race the liveness check cannot close: the spare dies after poll() said it runs, so
    # handing it the call meets a closed pipe; the guard starts another child for the call.
    from headroom.isolation import spare

    run_guarded(workers.add, 1, 1, cap_mb=200)
    (waiting,) = _waiting_children()
    process = spare._spares[0].process
    assert process.pid == waiting.pid
    waiting.kill()
    waiting.wait(5)
    monkeypatch.setattr(process, "poll", lambda: None)
    assert run_guarded(workers.add, 2, 3, cap_mb=200) == 5


@pytest.mark.usefixtures("spares_only")
def test_a_forked_process_never_takes_its_parents_spare():
    run_guarded(workers.add, 1, 1, cap_mb=200)
    (before,) = _waiting_children()
    pid = os.fork()
    if pid == 0:  # the child: a guarded call of its own, then out without teardown
        try:
            code = 0 if run_guarded(workers.add, 2, 2, cap_mb=200) == 4 else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert before.is_running() and before.status() != "zombie"  # still ours, still waiting
    # The forked process's own spare is orphaned by its os._exit: it dies with its parent
    # (PDEATHSIG), or on reaching _die_with_parent if it was still starting then, which on a
    # loaded machine can take a few seconds.
    deadline = time.monotonic() + 30
    while len(_waiting_children()) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p.pid for p in _waiting_children()] == [before.pid]
