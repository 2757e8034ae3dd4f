"""Guarded children started ahead of need, so a call does not wait for an interpreter.

A fresh ``python -m headroom.isolation.child`` spends 100-300 ms (more on a loaded host) starting
the interpreter and processing site-packages before it can run anything: on a 5 s task that is
most of the guard's overhead. So as each call starts, the guard asks for the next child, which
waits on its stdin for a call, while the current one runs: one spare per call of the module
running now (three tasks running side by side may end together and each find one), at most
``MAX_SPARES``. A spare has already imported the module of the call it was started after, as a
fresh child would first thing (a body's numpy, pyarrow and DuckDB imports take longer than
the interpreter). It is used only by a call of a function of that module, with the
environment and working directory it was started with (a spare of that module with another
environment is dropped, a fresh child started), and is always a clean process: one call
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
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from headroom.isolation import forkserver
from headroom.isolation.forkserver import ForkedChild

CHILD_ARGV = [sys.executable, "-m", "headroom.isolation.child", "--wait"]
# Spares kept per process: unset, as many as calls of the module run at once (so a wave of
# tasks ending together each finds one), at most MAX_SPARES; "0" turns spares off (each call
# then starts its own child, as a memory-tight host may want: a spare holds its interpreter
# and the body module's imports, outside any task's cap); "N" keeps at most N.
ENV_SPARE = "HEADROOM_SPARE_CHILD"
MAX_SPARES = 4


@dataclass
class _Spare:
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    cwd: str
    module: str

    def fits(self, env: dict[str, str], cwd: str, module: str) -> bool:
        return self.env == env and self.cwd == cwd and self.module == module


_lock = threading.Lock()
_spares: list[_Spare] = []  # oldest first
_coming: list[tuple[dict[str, str], str, str]] = []  # spares asked for, not started yet
_busy: list[tuple[subprocess.Popen[bytes], str]] = []  # children handed out, with their module
# One long-lived thread starts every child (see above); an executor's worker lives until exit.
_starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headroom-spare")


def _start(env: dict[str, str], module: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CHILD_ARGV, module],
        env=env,
        stdin=subprocess.PIPE,
        start_new_session=True,  # its own process group: the guard kills the whole tree
        close_fds=True,
    )


def start_child(env: dict[str, str], module: str) -> subprocess.Popen[bytes]:
    """A new child that imports ``module`` and waits; started by the long-lived thread."""
    return _starter.submit(_start, env, module).result()


def _most_spares() -> int:
    setting = os.environ.get(ENV_SPARE, "").strip()
    if not setting:
        return MAX_SPARES
    try:
        return max(0, int(setting))
    except ValueError:
        return 1  # a truthy word ("yes"): on, one spare


def take_child(env: dict[str, str], module: str) -> subprocess.Popen[bytes] | ForkedChild:
    """A child for a call of a function of ``module`` with ``env``: one to be forked by the
    module's fork server (headroom.isolation.forkserver) where it has one; else a waiting spare when
    one fits, else a new one, and then spares for the next calls are asked for (started by another
    thread while this call runs), one per call of the module now running."""
    forked = forkserver.child_for(env, module, lambda make: _starter.submit(make).result())
    if forked is not None:
        return forked
    cwd = os.getcwd()
    child = None
    stale: list[_Spare] = []
    most = _most_spares()
    with _lock:
        for spare in list(_spares):
            # Dead, or of this module with another environment (which changed): no use now.
            if spare.process.poll() is not None or (
                spare.module == module and not spare.fits(env, cwd, module)
            ):
                _spares.remove(spare)
                stale.append(spare)
            elif child is None and spare.fits(env, cwd, module):
                _spares.remove(spare)
                child = spare.process
        while len(_spares) > most:  # the setting went down (or spares were turned off)
            stale.append(_spares.pop(0))
    for spare in stale:
        _discard(spare.process)
    if child is None:
        child = start_child(env, module)
    with _lock:
        _busy[:] = [(p, m) for p, m in _busy if p.poll() is None]
        _busy.append((child, module))
        wanted = min(most, sum(m == module for _, m in _busy))
        have = sum(s.fits(env, cwd, module) for s in _spares)
        have += sum(c == (env, cwd, module) for c in _coming)
        missing = max(0, wanted - have)
        _coming.extend([(env, cwd, module)] * missing)
    for _ in range(missing):
        _starter.submit(_start, env, module).add_done_callback(_arrived(env, cwd, module))
    return child


def _arrived(
    env: dict[str, str], cwd: str, module: str
) -> Callable[[Future[subprocess.Popen[bytes]]], None]:
    def done(started: Future[subprocess.Popen[bytes]]) -> None:
        dropped: list[_Spare] = []
        with _lock:
            if (env, cwd, module) in _coming:
                _coming.remove((env, cwd, module))
            if started.exception() is not None:
                return  # no spare this time (e.g. out of processes); calls start their own
            _spares.append(_Spare(started.result(), env, cwd, module))
            # Over the limit: the oldest go (spares of another module or environment first).
            while len(_spares) > _most_spares():
                old = next((s for s in _spares if not s.fits(env, cwd, module)), _spares[0])
                _spares.remove(old)
                dropped.append(old)
        for old in dropped:
            _discard(old.process)

    return done


def hand_call(
    child: subprocess.Popen[bytes] | ForkedChild,
    call_file: str,
    result_file: str,
    cap_mb: float,
    cgroup_procs: str | None = None,
) -> None:
    """Give a waiting child its call (or have its server fork it); it starts at once, after
    joining the call's cgroup (its ``cgroup.procs`` file) when there is one."""
    if isinstance(child, ForkedChild):
        child.server.fork(child, call_file, result_file, cap_mb, cgroup_procs)
        return
    assert child.stdin is not None
    message = json.dumps(
        {"call": call_file, "result": result_file, "cap_mb": cap_mb, "cgroup": cgroup_procs}
    )
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
    """A forked process has no spare of its own: those it knows are its parent's children."""
    global _starter, _lock
    _lock = threading.Lock()
    _spares.clear()
    _coming.clear()
    _busy.clear()
    # The parent's starter thread does not exist here, and its executor would wait for it.
    _starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headroom-spare")


os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _drop_spares() -> None:
    with _lock:
        spares = list(_spares)
        _spares.clear()
    for spare in spares:
        _discard(spare.process)
