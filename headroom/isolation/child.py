"""Entry point of a guarded child: load the call, run it, write back its result.

Started ahead of need as ``python -m headroom.isolation.child --wait MODULE`` (see
headroom.isolation.spare): it imports MODULE, then waits on stdin for its call. Or forked, one per
call, by a fork server, ``python -m headroom.isolation.child --fork-server MODULE FD`` (see
headroom.isolation.forkserver). Imports nothing heavy itself, so start-up costs only what the
guarded function's own module imports.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import pickle
import signal
import sys
import traceback

from headroom.errors import OutOfMemory, classify_oom

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when the parent goes, and to prefer us to the parent."""
    parent = int(os.environ.get("HEADROOM_PARENT_PID", "0"))
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if parent and os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(137)
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("1000")
    except OSError:
        pass


def _join_cgroup(procs_file: str | None) -> None:
    """Enter the call's cgroup (headroom.isolation.cgroup) before the call runs: everything the body
    starts is then born inside it. Written here, not imported: the child imports nothing."""
    if procs_file:
        try:
            with open(procs_file, "w") as handle:
                handle.write(str(os.getpid()))
        except OSError:
            pass  # the guard still watches the tree from /proc


def _qualified(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def _resolve(module_name: str, qualname: str):
    target = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _own_memory_kb() -> int:
    """RssAnon + RssShmem of this process: what it holds before the call proper starts."""
    total = 0
    with open("/proc/self/status", "rb") as handle:
        for line in handle:
            if line.startswith((b"RssAnon:", b"RssShmem:")):
                total += int(line.split()[1])
    return total


def _dump(obj, required: bool = True) -> bytes | None:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        if required:
            raise
        return None


def wait_for_call(module_name: str) -> None:
    """A spare child (headroom.isolation.spare): started ahead of need, it imports the module of the
    call it expects, then waits on stdin for the call (call file, result file, cap); end of
    input means it is not needed."""
    import json

    _die_with_parent()
    try:
        importlib.import_module(module_name)
    except BaseException:  # noqa: BLE001 - the call imports it again and reports the error
        pass
    line = sys.stdin.readline()
    if not line:
        os._exit(0)
    call = json.loads(line)
    _join_cgroup(call.get("cgroup"))
    os.environ["HEADROOM_CAP_MB"] = str(call["cap_mb"])
    main(call["call"], call["result"])


def main(call_file: str, result_file: str) -> None:
    """Load the call, run it, write back its result (or how it failed), exit at once."""
    with open(call_file, "rb") as handle:
        module_name, qualname, args, kwargs = pickle.load(handle)
    base_kb = 0
    try:
        func = _resolve(module_name, qualname)
        base_kb = _own_memory_kb()
        value = func(*args, **kwargs)
        payload = {"ok": True, "value": value, "base_kb": base_kb}
        body = _dump(payload)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        payload = {
            "ok": False,
            # The body's own OutOfMemory travels as itself (with its cap and detail).
            "oom": None if isinstance(exc, OutOfMemory) else classify_oom(exc),
            "type": _qualified(exc),
            "message": str(exc),
            "traceback": traceback.format_exc(),
            "exception": _dump(exc, required=False),
            "base_kb": base_kb,
        }
        body = _dump(payload)
    tmp = result_file + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(body or b"")
    os.replace(tmp, result_file)
    sys.stdout.flush()
    # Skip interpreter teardown: big heaps take long to free and the parent is waiting.
    os._exit(0)


def serve_forks(module_name: str, control_fd: int) -> None:
    """A fork server (headroom.isolation.forkserver): import the module, then fork one child per
    call read from stdin and report on ``control_fd`` each child's pid and, once reaped, its exit
    status. Says ``nofork`` and exits when the import left other threads (a fork would lose
    them)."""
    import json
    import select

    _die_with_parent()
    try:
        importlib.import_module(module_name)
    except BaseException:  # noqa: BLE001 - each call imports it again and reports the error
        pass
    if len(os.listdir("/proc/self/task")) > 1:
        os.write(control_fd, b"nofork\n")
        os._exit(0)
    os.write(control_fd, b"ready\n")
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    server, pending, accepting = os.getpid(), b"", True
    running: set[int] = set()
    while accepting or running:
        ready, _, _ = select.select([0, wake_read] if accepting else [wake_read], [], [])
        if wake_read in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_read, 4096):
                    pass
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            running.discard(pid)
            os.write(control_fd, f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())
        if accepting and 0 in ready:
            data = os.read(0, 65536)
            if not data:  # no more calls: wait for those running, then go
                accepting = False
                continue
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                call = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _run_forked(call, server, (control_fd, wake_read, wake_write))
                running.add(pid)
                os.write(control_fd, f"pid {call['token']} {pid}\n".encode())
    os._exit(0)


def _run_forked(call: dict, server: int, server_fds: tuple[int, ...]) -> None:
    """In a child just forked by the fork server: become what a spare would be, run the call."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in server_fds:
        os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.setsid()  # its own process group: the guard kills the whole tree
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server:  # the server died before prctl took effect
        os._exit(137)
    _join_cgroup(call.get("cgroup"))
    os.environ["HEADROOM_CAP_MB"] = str(call["cap_mb"])
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:  # as a fresh process would be (``random`` reseeds at fork)
        numpy_random.seed()
    try:
        main(call["call"], call["result"])
    finally:  # main exits itself; anything else must never run the server's loop here
        os._exit(1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fork-server"] and len(sys.argv) == 4:
        serve_forks(sys.argv[2], int(sys.argv[3]))
    if sys.argv[1:2] != ["--wait"] or len(sys.argv) != 3:
        sys.exit(
            "usage: python -m headroom.isolation.child --wait MODULE"
            " (started by headroom.isolation.spare)"
        )
    wait_for_call(sys.argv[2])
