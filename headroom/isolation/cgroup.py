"""A memory cgroup for each guarded call, where this machine lets the process make one.

The guard's /proc sampling sees a new process only when it next walks the tree, so a body that
starts allocating children can pass its cap between two walks, and memory no process maps
(a file written to tmpfs) never shows in /proc at all. In a memory cgroup the kernel charges
every descendant from its first page, whatever its process group or session: the call's cgroup
gets a hard limit a little above the cap (the watchdog still kills at the cap and says so; the
kernel stops what the watchdog cannot see in time), its OOM kills are counted in its own events,
and killing every process in it ends the call, even processes that left the tree.

cgroup v1 (a writable memory hierarchy) and v2 (a writable subtree with the memory controller)
both serve. Under v2 a cgroup that holds processes cannot hand controllers to children ("no
internal processes"): when this process is alone in its cgroup it moves into a leaf of its own
first; when it is not, the guard works without cgroups. ``HEADROOM_CGROUP=0`` turns them off.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
import uuid
from pathlib import Path

from headroom.budget import own_memory_cgroup
from headroom.units import MIB

ENV_CGROUP = "HEADROOM_CGROUP"
# The kernel's limit over the cap: room for what the cgroup charges and RssAnon does not show
# (page tables, kernel stacks, page cache), so the watchdog, not the kernel, ends an ordinary
# over-cap body, and a 10 % overshoot is never passed.
HARD_FACTOR = 1.05
HARD_FLOOR_MIB = 8.0
_lock = threading.Lock()
_parents: dict[int, tuple[Path, str] | None] = {}  # by pid: a forked process finds its own


def enabled() -> bool:
    return os.environ.get(ENV_CGROUP, "").strip().lower() not in ("0", "false", "no", "off")


def available() -> bool:
    """Whether guarded calls here get a cgroup each."""
    return enabled() and _parent() is not None


class CallGroup:
    """One call's cgroup: processes join it, the kernel limits it, :meth:`end` empties it."""

    def __init__(self, path: Path, version: str) -> None:
        self.path, self.version = path, version
        self.oom_kills = 0

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kernel_oom_kills(self) -> int:
        name = "memory.events" if self.version == "v2" else "memory.oom_control"
        with contextlib.suppress(OSError, ValueError):
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def end(self, wait_s: float) -> list[int]:
        """Kill every process in the cgroup, wait until it is empty, note its OOM kills and
        remove it; the pids still in it after ``wait_s``."""
        self.oom_kills = self.kernel_oom_kills()
        if self.version == "v2":
            with contextlib.suppress(OSError):  # the kernel kills the lot, forks included
                (self.path / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + wait_s
        delay = 0.0005
        while pids := self.pids():
            for pid in pids:  # v1 (or no cgroup.kill): again each round, for late forks
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return pids
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        self.oom_kills = max(self.oom_kills, self.kernel_oom_kills())
        while True:  # removal waits for the kernel to finish the exits
            try:
                self.path.rmdir()
                return []
            except FileNotFoundError:
                return []
            except OSError:
                if time.monotonic() > deadline:
                    return []
                time.sleep(0.002)


def for_call(cap_mb: float) -> CallGroup | None:
    """A new cgroup limited to the call's cap, or None where none can be made here."""
    if not enabled():
        return None
    parent = _parent()
    if parent is None:
        return None
    base, version = parent
    path = base / f"call-{uuid.uuid4().hex[:12]}"
    limit = str(int(max(cap_mb * HARD_FACTOR, cap_mb + HARD_FLOOR_MIB) * MIB))
    try:
        path.mkdir()
    except OSError:
        return None
    try:
        if version == "v2":
            (path / "memory.max").write_text(limit)
            with contextlib.suppress(OSError):  # no swap accounting: nothing to turn off
                (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(limit)
            with contextlib.suppress(OSError):
                (path / "memory.memsw.limit_in_bytes").write_text(limit)
    except OSError:
        with contextlib.suppress(OSError):
            path.rmdir()
        return None
    return CallGroup(path, version)


def _parent() -> tuple[Path, str] | None:
    pid = os.getpid()
    with _lock:
        if pid not in _parents:
            _parents[pid] = _make_parent(pid)
        return _parents[pid]


def _make_parent(pid: int) -> tuple[Path, str] | None:
    """This process's own directory for call cgroups, under its memory cgroup."""
    found = own_memory_cgroup("/proc", "/sys/fs/cgroup")
    if found is None:
        return None
    base, relative, version = found
    own = base / relative
    parent = own / f"headroom-{pid}"
    _remove_stale(own)
    try:
        if version == "v2" and not _v2_delegates_memory(own, pid):
            return None
        parent.mkdir(exist_ok=True)
        if version == "v2":
            (parent / "cgroup.subtree_control").write_text("+memory")
    except OSError:
        return None
    return parent, version


def _remove_stale(own: Path) -> None:
    """Remove the empty cgroups left by guarding processes that were killed (no atexit)."""
    with contextlib.suppress(OSError):
        for stale in own.glob("headroom-*"):
            owner = stale.name.removeprefix("headroom-")
            if not owner.isdigit() or os.path.exists(f"/proc/{owner}"):
                continue
            for call in stale.glob("call-*"):
                with contextlib.suppress(OSError):
                    call.rmdir()
            with contextlib.suppress(OSError):
                stale.rmdir()


def _v2_delegates_memory(own: Path, pid: int) -> bool:
    """Whether ``own`` hands the memory controller to its children, after moving this
    process into a leaf of its own when it is alone in ``own``."""
    try:
        if "memory" in (own / "cgroup.subtree_control").read_text().split():
            return True
        if "memory" not in (own / "cgroup.controllers").read_text().split():
            return False
        if (own / "cgroup.procs").read_text().split() != [str(pid)]:
            return False  # others live here: moving them is not this library's to do
        leaf = own / f"headroom-{pid}-self"
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(pid))
        (own / "cgroup.subtree_control").write_text("+memory")
        return True
    except OSError:
        return False


def _remove_parent() -> None:
    with _lock:
        parent = _parents.get(os.getpid())
    if parent is not None:
        with contextlib.suppress(OSError):
            parent[0].rmdir()


atexit.register(_remove_parent)
