"""Guarded calls forked from a warm fork server: real servers, real forked children."""

from __future__ import annotations

import os
import signal
import time

import pytest

from headroom import OutOfMemory, run_guarded
from headroom.isolation import forkserver
from headroom.prefect.runs import process_start
from tests.headroom import threaded_body, workers


def _server_of(module: str) -> forkserver.ForkServer:
    (server,) = [s for s in forkserver._servers.values() if s.module == module]
    return server


def test_each_call_runs_in_a_fresh_child_forked_by_one_server():
    first_pid, first_parent = run_guarded(workers.parents, cap_mb=200)
    second_pid, second_parent = run_guarded(workers.parents, cap_mb=200)
    server = _server_of(workers.__name__)
    assert first_parent == second_parent == server.process.pid != os.getpid()
    assert first_pid != second_pid
    assert server.process.poll() is None and not server.busy()


def test_a_forked_child_is_capped_and_killed_like_any_other():
    with pytest.raises(OutOfMemory) as caught:
        run_guarded(workers.allocate, 2000, 50, cap_mb=300)
    assert caught.value.kind == "watchdog"
    assert 300 < caught.value.peak_mb < 300 * 1.15
    with pytest.raises(OutOfMemory) as caught:
        run_guarded(workers.kill_self, cap_mb=200)
    assert caught.value.kind == "oom-killer"
    assert run_guarded(workers.add, 2, 3, cap_mb=200) == 5


def test_another_environment_gets_another_server(monkeypatch):
    run_guarded(workers.add, 1, 1, cap_mb=200)
    before = _server_of(workers.__name__)
    monkeypatch.setenv("HEADROOM_TEST_MARK", "after the server started")
    assert run_guarded(workers.environment_value, "HEADROOM_TEST_MARK", cap_mb=200) == (
        "after the server started"
    )
    after = _server_of(workers.__name__)
    assert after is not before
    before.process.wait(10)  # the retired server, idle, went


def test_a_module_that_starts_threads_on_import_is_not_forked_from():
    for _ in range(2):
        pid, parent = run_guarded(threaded_body.parents, cap_mb=200)
        assert parent == os.getpid()
    assert threaded_body.__name__ in forkserver._unforkable


def test_a_server_killed_under_a_running_call_fails_that_call_only(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    pidfile = tmp_path / "child.pid"
    run_guarded(workers.add, 1, 1, cap_mb=200)
    server = _server_of(workers.__name__)
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(run_guarded, workers.write_pid_and_wait, str(pidfile), cap_mb=200)
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline, "the forked child never started"
            time.sleep(0.05)
        child = int(pidfile.read_text())
        os.kill(server.process.pid, signal.SIGKILL)
        with pytest.raises(OutOfMemory) as caught:
            call.result(timeout=30)
    assert caught.value.kind == "oom-killer"  # a SIGKILL this process did not send
    deadline = time.monotonic() + 10
    while process_start(child) is not None:
        assert time.monotonic() < deadline, "the forked child outlived its server"
        time.sleep(0.05)
    assert run_guarded(workers.add, 2, 2, cap_mb=200) == 4  # a new server
    assert _server_of(workers.__name__) is not server


def test_fork_servers_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(forkserver.ENV_FORK, "0")
    pid, parent = run_guarded(workers.parents, cap_mb=200)
    assert parent == os.getpid()


def test_the_cpu_of_forked_children_counts_in_the_calling_process(tmp_path):
    # A benchmark measures a process tree by its rusage: the server and its children must be
    # reaped, not left to init, when the process that used them exits.
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = (
        f"import sys; sys.path.insert(0, {str(root)!r})\n"
        "from headroom import run_guarded\n"
        "from tests.headroom import workers\n"
        "for _ in range(2):\n"
        "    run_guarded(workers.spin, 0.6, cap_mb=200)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    _, status, usage = os.wait4(parent.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert usage.ru_utime + usage.ru_stime > 1.2  # both calls' 0.6 s of CPU, and more


def test_forked_children_do_not_share_random_state(monkeypatch):
    # numpy with one BLAS thread leaves the server single-threaded: its children are forked,
    # and each must draw its own numbers, as a fresh process would.
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from tests.headroom import numpy_body

    draws = [run_guarded(numpy_body.draw, cap_mb=300) for _ in range(3)]
    assert numpy_body.__name__ not in forkserver._unforkable  # forked, not spawned
    assert len({d[0] for d in draws}) == 3 and len({d[1] for d in draws}) == 3
