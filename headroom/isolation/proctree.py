"""The processes of one guarded call: found and measured from /proc, and ended together.

A body's descendants may leave its process group and session (``start_new_session=True``),
and may outlive the body when it returns. So the guard remembers every descendant it has seen,
by pid and start time (a pid can be reused once its process is gone), and when the call ends,
for whatever reason, kills each one that is still that process and waits until all are gone.
A process whose parent dies is handed to the nearest "child subreaper" above it, else to
PID 1, which in a container may never reap it; the guarding process makes itself a subreaper,
so the orphans of a call become its own children and are reaped here.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
END_WAIT_S = 10.0
_subreaper_lock = threading.Lock()
_subreaper = False


def process_tree(root: int) -> list[int]:
    """The root pid and all its descendants, from /proc/<pid>/task/<tid>/children."""
    pids, index = [root], 0
    while index < len(pids):
        pid = pids[index]
        index += 1
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as handle:
                    pids.extend(int(p) for p in handle.read().split())
        except OSError:
            continue
    return pids


def tree_memory_kb(pids: Iterable[int]) -> tuple[float, float]:
    """(sum of RssAnon + RssShmem, sum of the processes' anonymous high-water marks) in KiB.

    VmHWM counts file-backed pages too (shared libraries), so the file-backed part seen now is
    taken off it: what is left estimates the peak of the memory the cap is about.
    """
    used = hwm = 0.0
    for pid in pids:
        fields = status_kb(pid)
        if not fields:
            continue
        anon = fields.get("RssAnon", 0) + fields.get("RssShmem", 0)
        used += anon
        hwm += max(fields.get("VmHWM", 0) - fields.get("RssFile", 0), anon)
    return used, hwm


def status_kb(pid: int) -> dict[str, int]:
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            text = handle.read()
    except OSError:
        return {}
    fields = {}
    for line in text.split(b"\n"):
        if line.startswith((b"Rss", b"VmHWM")):
            name, _, rest = line.partition(b":")
            fields[name.decode()] = int(rest.split()[0])
    return fields


def identity(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of ``pid``, None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rfind(b")") + 2 :].split()  # the name may hold spaces and parentheses
    return fields[0].decode(), int(fields[19])


def remember(seen: dict[int, int], pids: Iterable[int]) -> None:
    """Note the start time of each pid not seen before."""
    for pid in pids:
        if pid not in seen:
            found = identity(pid)
            if found is not None:
                seen[pid] = found[1]


def adopt_orphans() -> None:
    """Make this process the child subreaper of its descendants (once): orphans of a guarded
    call then become its children, which :func:`end` reaps."""
    global _subreaper
    with _subreaper_lock:
        if _subreaper:
            return
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)
        _subreaper = True


def end(seen: dict[int, int], wait_s: float = END_WAIT_S) -> list[int]:
    """SIGKILL every process in ``seen`` that is still the process seen, reap those that are
    this process's children, and wait until all are gone; the pids left after ``wait_s``."""
    alive = {pid: start for pid, start in seen.items() if _state(pid, start) is not None}
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    delay = 0.0005
    while alive:
        for pid in list(alive):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # an orphan handed to this process (subreaper)
            if not _lingers(pid, alive[pid]):
                del alive[pid]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    if alive:
        log.warning("processes of a guarded call outlived SIGKILL: %s", sorted(alive))
    return sorted(alive)


def _state(pid: int, start: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid`` while it is the process that started at
    ``start``, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rfind(b")") + 2 :].split()
    if int(fields[19]) != start:
        return None
    return fields[0].decode(), int(fields[1])


def _lingers(pid: int, start: int) -> bool:
    """Whether ``pid`` still runs, or is a zombie some live parent will reap (a zombie of a
    PID 1 that never reaps is dead for good, and nothing here can reap it)."""
    found = _state(pid, start)
    return found is not None and (found[0] != "Z" or found[1] != 1)
