"""Guarded children started ahead of need, so a call does not wait for an interpreter.

A fresh ``python -m headroom._child`` spends 100-300 ms (more on a loaded host) starting the
interpreter and processing site-packages before it can run anything: on a 5 s task that is
most of the guard's overhead. So after each call the guard starts the next child, which waits
on its stdin for the call, while the current one runs. It has already imported the module of
the call it was started after, as a fresh child would first thing (a body's numpy, pyarrow
and DuckDB imports take longer than the interpreter). A spare is used only by a call of a
function of that module, with the environment and working directory it was started with
(else it is dropped and a fresh child started), and is always a clean process: one call
each, never reused.

Spares are started by one long-lived thread: a child's PR_SET_PDEATHSIG fires when the
*thread* that started it ends, and a task runner's worker thread may end while its spare
waits, which would kill a child that a later call from another thread is using.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass

CHILD_ARGV = [sys.executable, "-m", "headroom._child", "--wait"]
# "0" turns spares off: each call then starts its own child, as a memory-tight host may want
# (a spare holds its interpreter and the body module's imports, outside any task's cap).
ENV_SPARE = "HEADROOM_SPARE_CHILD"


@dataclass
class _Spare:
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    cwd: str
    module: str

    def fits(self, env: dict[str, str], cwd: str, module: str) -> bool:
        return self.env == env and self.cwd == cwd and self.module == module


_lock = threading.Lock()
_spare: _Spare | None = None
_starting = False  # a thread is starting the spare
_requests: queue.SimpleQueue[tuple[dict[str, str], str, Future[subprocess.Popen[bytes]]]] = (
    queue.SimpleQueue()
)
_starter: threading.Thread | None = None


def _start(env: dict[str, str], module: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CHILD_ARGV, module],
        env=env,
        stdin=subprocess.PIPE,
        start_new_session=True,  # its own process group: the guard kills the whole tree
        close_fds=True,
    )


def _serve_requests() -> None:
    while True:
        env, module, done = _requests.get()
        try:
            done.set_result(_start(env, module))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            done.set_exception(exc)


def start_child(env: dict[str, str], module: str) -> subprocess.Popen[bytes]:
    """A new child that imports ``module`` and waits; started by the long-lived thread."""
    global _starter
    with _lock:
        if _starter is None or not _starter.is_alive():
            _starter = threading.Thread(target=_serve_requests, name="headroom-spare", daemon=True)
            _starter.start()
    done: Future[subprocess.Popen[bytes]] = Future()
    _requests.put((env, module, done))
    return done.result()


def take_child(env: dict[str, str], module: str) -> subprocess.Popen[bytes]:
    """A waiting child for a call of a function of ``module`` with ``env``: the spare when it
    fits, else a new one; then a spare for the next call is started while this one runs."""
    global _spare, _starting
    cwd = os.getcwd()
    with _lock:
        spare, _spare = _spare, None
    child = None
    if spare is not None:
        if spare.fits(env, cwd, module) and spare.process.poll() is None:
            child = spare.process
        else:
            _discard(spare.process)
    if child is None:
        child = start_child(env, module)
    if os.environ.get(ENV_SPARE, "1") == "0":
        return child
    with _lock:
        # One spare per process: when another thread's fitting spare exists or is on its way,
        # a second would only be started, import its modules and be thrown away.
        if _starting or (_spare is not None and _spare.fits(env, cwd, module)):
            return child
        _starting = True
    following = None
    try:
        following = start_child(env, module)
    except OSError:
        pass  # no spare this time (e.g. out of processes); the call goes on
    finally:
        with _lock:
            _starting = False
            stale = _spare
            if following is not None:
                _spare = _Spare(following, env, cwd, module)
    if following is not None and stale is not None:  # a spare for other calls: replaced
        _discard(stale.process)
    return child


def hand_call(
    child: subprocess.Popen[bytes], call_file: str, result_file: str, cap_mb: float
) -> None:
    """Give a waiting child its call; it starts at once."""
    assert child.stdin is not None
    message = json.dumps({"call": call_file, "result": result_file, "cap_mb": cap_mb})
    child.stdin.write(message.encode() + b"\n")
    child.stdin.close()


def _discard(process: subprocess.Popen[bytes]) -> None:
    """End a spare that will not be used; it has run nothing yet, so nothing is lost."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    with contextlib.suppress(OSError):
        if process.stdin is not None:
            process.stdin.close()


def _forget_after_fork() -> None:
    """A forked process has no spare of its own: the one it knows is its parent's child."""
    global _spare, _starting, _starter, _lock
    _lock = threading.Lock()
    _spare, _starting, _starter = None, False, None


os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _drop_spare() -> None:
    global _spare
    with _lock:
        spare, _spare = _spare, None
    if spare is not None:
        _discard(spare.process)
