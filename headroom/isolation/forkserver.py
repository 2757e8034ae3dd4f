"""Guarded children forked from a warm process, so a call costs no interpreter start.

A spare (headroom.isolation.spare) hides a child's start-up from the wall clock, not from the CPU:
each ``python -m headroom.isolation.child`` spends CPU starting the interpreter and importing the
body's module, and a run of a few hundred short tasks pays that for
every one, plus the spares left unused at the end. So for each body module (and environment
and working directory) one fork server is started once: it imports the module, then forks a
fresh child per call, which runs that one call exactly as a spare would (its own session, its
result in the result file, killed when the server or this process dies) and is reaped by the
server, which reports its exit status here.

A module whose import leaves more than one thread in the server (numpy's BLAS pool, say)
is never forked from: the server says so and exits, and that module's calls use spares.
``HEADROOM_FORK_SERVERS=0`` turns fork servers off. A waiting server holds its interpreter and
the module's imports outside any cap, as a spare does.
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
import uuid

ENV_FORK = "HEADROOM_FORK_SERVERS"
# A server that has not answered a call by then is taken as gone; the call starts a child.
REPLY_TIMEOUT_S = 30.0
START_TIMEOUT_S = 120.0


def enabled() -> bool:
    value = os.environ.get(ENV_FORK, "")
    return value.strip().lower() not in ("0", "false", "no", "off")


class ForkedChild:
    """What the guard needs of a child (``pid``, ``poll``, ``wait``, ``returncode``, ``kill``),
    for a child a fork server started and reaps."""

    def __init__(self, server: ForkServer) -> None:
        self.server = server
        self.pid: int | None = None
        self.returncode: int | None = None
        self._exited = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.pid is not None and self.returncode is None:  # reaped: the pid may be reused
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _ended(self, code: int) -> None:
        self.returncode = code
        self._exited.set()


class ForkServer:
    """One fork server: its process, its control pipe and the children it forked."""

    def __init__(self, env: dict[str, str], cwd: str, module: str) -> None:
        self.module = module
        self.state = "starting"
        self._answered = threading.Event()
        self._lock = threading.Lock()
        self._children: dict[int, ForkedChild] = {}
        self._waiting: dict[str, tuple[ForkedChild, threading.Event]] = {}
        read_end, write_end = os.pipe()
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "headroom.isolation.child",
                    "--fork-server",
                    module,
                    str(write_end),
                ],
                env=env,
                cwd=cwd,
                stdin=subprocess.PIPE,
                pass_fds=(write_end,),
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(write_end)
        self._control = os.fdopen(read_end, "rb")
        threading.Thread(target=self._read, name="headroom-fork-server", daemon=True).start()

    def ready(self) -> bool:
        """Wait for the server's first word: True when it forks, False when it cannot."""
        self._answered.wait(START_TIMEOUT_S)
        return self.state == "ready"

    def fork(
        self,
        child: ForkedChild,
        call_file: str,
        result_file: str,
        cap_mb: float,
        cgroup_procs: str | None = None,
    ) -> None:
        """Have the server fork ``child`` for this call (the child joins the call's cgroup
        before it runs anything); OSError when the server is gone."""
        token = uuid.uuid4().hex
        replied = threading.Event()
        with self._lock:
            if self.state != "ready":
                raise OSError(f"the fork server of {self.module} is {self.state}")
            self._waiting[token] = (child, replied)
        message = {
            "token": token,
            "call": call_file,
            "result": result_file,
            "cap_mb": cap_mb,
            "cgroup": cgroup_procs,
        }
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except (OSError, ValueError) as exc:
            with self._lock:
                self._waiting.pop(token, None)
            raise OSError(f"the fork server of {self.module} is gone: {exc}") from None
        if not replied.wait(REPLY_TIMEOUT_S) or child.pid is None:
            with self._lock:
                self._waiting.pop(token, None)
                self.state = "gone"
            # It must never fork this call late, beside the child the caller starts instead.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            raise OSError(f"the fork server of {self.module} did not fork the call")

    def busy(self) -> bool:
        with self._lock:
            return bool(self._children or self._waiting)

    def close(self) -> None:
        """No more calls: the server exits once its children have ended."""
        with contextlib.suppress(OSError, ValueError):
            if self.process.stdin is not None:
                self.process.stdin.close()

    def _read(self) -> None:
        for raw in self._control:
            word, _, rest = raw.decode().strip().partition(" ")
            if word in ("ready", "nofork"):
                self.state = word
                self._answered.set()
            elif word == "pid":
                token, forked = rest.split()
                with self._lock:
                    asked = self._waiting.pop(token, None)
                    if asked is not None:
                        asked[0].pid = int(forked)
                        self._children[int(forked)] = asked[0]
                if asked is not None:
                    asked[1].set()
            elif word == "exit":
                reaped, code = (int(v) for v in rest.split())
                with self._lock:
                    ended = self._children.pop(reaped, None)
                if ended is not None:
                    ended._ended(code)
        # The server is gone: its children die with it (their parent-death signal).
        with self._lock:
            self.state = "gone" if self.state == "ready" else self.state
            orphans, self._children = list(self._children.values()), {}
            waiting, self._waiting = list(self._waiting.values()), {}
        for child in orphans:
            child._ended(-signal.SIGKILL)
        for _, replied in waiting:
            replied.set()
        self._answered.set()
        with contextlib.suppress(Exception):
            self.process.wait(5)


_lock = threading.Lock()
_servers: dict[tuple, ForkServer] = {}
_unforkable: set[str] = set()


def child_for(env: dict[str, str], module: str, start) -> ForkedChild | None:
    """A child to be forked for a call of ``module`` with ``env``, or None when this module is
    not forked from (then the caller starts its own). ``start`` runs a callable on the
    long-lived starter thread (see headroom.isolation.spare) and returns its result."""
    if not enabled() or module in _unforkable:
        return None
    cwd = os.getcwd()
    key = (tuple(sorted(env.items())), cwd, module)
    retired: list[ForkServer] = []
    with _lock:
        server = _servers.get(key)
        if server is not None and server.state not in ("starting", "ready"):
            del _servers[key]
            server = None
        if server is None:
            # Servers of this module for another environment: no more calls come their way.
            for other_key, other in list(_servers.items()):
                if other.module == module:
                    del _servers[other_key]
                    retired.append(other)
            server = start(lambda: ForkServer(env, cwd, module))
            _servers[key] = server
    for other in retired:
        other.close()
    if server.ready():
        return ForkedChild(server)
    with _lock:
        if server.state == "nofork":
            _unforkable.add(module)
        if _servers.get(key) is server:
            del _servers[key]
    return None


def _forget_after_fork() -> None:
    """A forked process has no server of its own: those it knows are its parent's."""
    global _lock
    _lock = threading.Lock()
    _servers.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _close_servers() -> None:
    """End every server and reap it: it exits once its children have (the CPU it and its
    children used then counts in this process's own rusage, as a spare's does)."""
    with _lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.close()
    for server in servers:
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
