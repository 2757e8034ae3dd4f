"""Run a callable in a child process under a memory cap and classify how it died."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import headroom.isolation.cgroup as call_cgroup
from headroom.budget import cgroup_oom_kills
from headroom.errors import ChildFailed, GuardTimeout, OutOfMemory
from headroom.isolation import proctree, spare
from headroom.units import MIB

# Sampling gets faster as the child nears its cap: /proc reads cost ~20 us, and a fast
# allocator can fault in 100 MiB in ~30 ms.
SLOW_INTERVAL_S = 0.02
FAST_INTERVAL_S = 0.004
FAST_ABOVE = 0.5
# The tree is walked at every sample (a process forked between two walks is invisible to the
# cap until the next), and sampling is fast while the tree has more than one process: children
# started together can allocate together.
TREE_REFRESH_S = 0.0
FAST_WHEN_FORKED = True
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardResult:
    """What a guarded call returned and what it cost."""

    value: Any
    peak_mb: float
    seconds: float
    base_mb: float = 0.0
    """What the child held after importing the function's module, before the call."""


def run_guarded(
    func: Callable[..., Any] | str,
    *args: Any,
    cap_mb: float,
    timeout_s: float | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``func(*args, **kwargs)`` in a fresh child process capped at ``cap_mb`` MiB.

    Returns its value, raises :class:`OutOfMemory` when it ran out of memory (any kind), and
    re-raises any other exception of the child with its original type.
    """
    return run_guarded_measured(func, *args, cap_mb=cap_mb, timeout_s=timeout_s, **kwargs).value


def run_guarded_measured(
    func: Callable[..., Any] | str,
    *args: Any,
    cap_mb: float,
    timeout_s: float | None = None,
    **kwargs: Any,
) -> GuardResult:
    """Like :func:`run_guarded`, and also report the child tree's peak memory and seconds."""
    return guarded_call(func, args, kwargs, cap_mb=cap_mb, timeout_s=timeout_s)


def guarded_call(
    func: Callable[..., Any] | str,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    cap_mb: float,
    timeout_s: float | None = None,
) -> GuardResult:
    """The guard with the call's arguments passed as a tuple and a dict, so that a function
    may itself take parameters named ``cap_mb`` or ``timeout_s``."""
    kwargs = kwargs or {}
    if cap_mb <= 0:
        raise ValueError(f"cap_mb must be positive, got {cap_mb}")
    module_name, qualname = callable_path(func)
    with tempfile.TemporaryDirectory(prefix="headroom-guard-") as workdir:
        call_file = Path(workdir, "call.pkl")
        result_file = Path(workdir, "result.pkl")
        call_file.write_bytes(pickle.dumps((module_name, qualname, args, kwargs)))
        env = dict(os.environ, HEADROOM_PARENT_PID=str(os.getpid()))
        env.pop("HEADROOM_CAP_MB", None)  # handed with the call: a spare starts before it
        # The child imports the body by name: it must see every directory the parent does
        # (the parent's sys.path may hold more than its PYTHONPATH, e.g. a script's folder).
        search = [p for p in sys.path if p] + env.get("PYTHONPATH", "").split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in search if p))
        oom_before = cgroup_oom_kills()
        proctree.adopt_orphans()
        group = call_cgroup.for_call(cap_mb)
        try:
            child, started = _start_call(env, module_name, (call_file, result_file), cap_mb, group)
        except BaseException:
            if group is not None:
                group.end(proctree.END_WAIT_S)
            raise
        watch = _Watch(child, cap_mb)
        try:
            outcome = watch.until_exit(started, timeout_s)
        finally:  # whatever happened, nothing the call started outlives it
            _end_call(child, watch.seen, group)
        seconds = time.monotonic() - started
        payload = None
        if outcome == "exited" and result_file.exists():
            payload = pickle.loads(result_file.read_bytes())
    if payload is not None and payload["ok"]:
        base_mb = payload.get("base_kb", 0) / 1024
        return GuardResult(payload["value"], watch.peak_mb, seconds, base_mb)
    raise _failure(
        f"{module_name}:{qualname}",
        outcome,
        payload,
        child,
        cap_mb=cap_mb,
        peak_mb=watch.peak_mb,
        seconds=seconds,
        timeout_s=timeout_s,
        kernel_kills=group.oom_kills if group is not None else 0,
        oom_before=oom_before,
    )


def _failure(
    target: str,
    outcome: str,
    payload: dict[str, Any] | None,
    child: subprocess.Popen[bytes] | spare.ForkedChild,
    *,
    cap_mb: float,
    peak_mb: float,
    seconds: float,
    timeout_s: float | None,
    kernel_kills: int,
    oom_before: int | None,
) -> BaseException:
    """The error of a call that did not return a value: the one place the guard decides
    whether it ran out of memory, and how. Seen from outside: ``watchdog`` (killed past its
    cap) and ``oom-killer`` (a SIGKILL the guard did not send, or an OOM kill in the call's
    cgroup); seen inside, the kind :func:`headroom.errors.classify_oom` gave the child's error."""
    if outcome == "watchdog":
        return OutOfMemory(
            "watchdog", cap_mb, peak_mb, detail=f"killed past its cap after {seconds:.1f} s"
        )
    if outcome == "timeout":
        return GuardTimeout(f"{target} ran past its timeout of {timeout_s} s")
    if payload is None:
        code = child.wait()
        if code in (-signal.SIGKILL, 137):
            oom_after = cgroup_oom_kills()
            counted = kernel_kills > 0 or (
                oom_before is not None and oom_after is not None and oom_after > oom_before
            )
            detail = "the kernel's OOM killer" if counted else "SIGKILL from outside"
            return OutOfMemory("oom-killer", cap_mb, peak_mb, detail=detail)
        reason = f"signal {-code}" if code < 0 else f"exit status {code}"
        return ChildFailed("ChildCrashed", f"{target} died with {reason} and no result")
    if payload["oom"]:
        return OutOfMemory(payload["oom"], cap_mb, peak_mb, detail=payload["message"][:500])
    if kernel_kills:  # a process of the call was OOM-killed in its cgroup: the cause
        return OutOfMemory(
            "oom-killer",
            cap_mb,
            peak_mb,
            detail=f"the kernel's OOM killer in the call's cgroup ({payload['message'][:300]})",
        )
    return _rebuild(payload)


def _start_call(
    env: dict[str, str],
    module_name: str,
    files: tuple[Path, Path],
    cap_mb: float,
    group: call_cgroup.CallGroup | None,
) -> tuple[subprocess.Popen[bytes] | spare.ForkedChild, float]:
    """A child running the call (joined to the call's cgroup), and when it started."""
    procs_file = group.procs_file if group is not None else None
    call_file, result_file = (str(f) for f in files)
    child = spare.take_child(env, module_name)
    started = time.monotonic()
    try:
        spare.hand_call(child, call_file, result_file, cap_mb, procs_file)
    except OSError:  # the waiting child is gone (killed from outside): one more
        _end_call(child, {}, None)
        child = spare.start_child(env, module_name)
        started = time.monotonic()
        spare.hand_call(child, call_file, result_file, cap_mb, procs_file)
    return child, started


def callable_path(func: Callable[..., Any] | str) -> tuple[str, str]:
    """(module, qualified name) by which a child can import ``func``."""
    if isinstance(func, str):
        module_name, sep, qualname = func.partition(":")
        if not sep or not module_name or not qualname:
            raise ValueError(f"expected 'module:function', got {func!r}")
        return module_name, qualname
    module_name = str(getattr(func, "__module__", "") or "")
    qualname = str(getattr(func, "__qualname__", "") or "")
    if not module_name or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(f"{func!r} is not importable by module and name; define it at top level")
    if module_name == "__main__":
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        if spec is None or not spec.name:
            raise ValueError(f"{qualname} lives in a script; move it into an importable module")
        module_name = spec.name
    return module_name, qualname


def _rebuild(payload: dict[str, Any]) -> BaseException:
    """The child's exception with its original type, carrying the child's traceback."""
    exc: BaseException | None = None
    if payload.get("exception") is not None:
        try:
            exc = pickle.loads(payload["exception"])
        except Exception:
            exc = None
    if exc is None:
        return ChildFailed(payload["type"], payload["message"], payload["traceback"])
    exc.add_note("Traceback in the guarded child:\n" + payload["traceback"].rstrip())
    return exc


class _Watch:
    """Samples a child tree's memory and kills it past its cap; remembers every process of
    the tree it has seen (pid and start time), so they can all be ended with the call."""

    def __init__(self, child: subprocess.Popen[bytes] | spare.ForkedChild, cap_mb: float) -> None:
        assert child.pid is not None  # started (or forked) by now
        self.child, self.pid = child, child.pid
        self.cap_kb = cap_mb * 1024
        self.peak_kb = 0.0
        self.tree = [child.pid]
        self.seen: dict[int, int] = {}
        self._tree_at = 0.0

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    def until_exit(self, started: float, timeout_s: float | None) -> str:
        while True:
            now = time.monotonic()
            if now - self._tree_at >= TREE_REFRESH_S:
                self.tree = proctree.process_tree(self.pid)
                self._tree_at = now
                if len(self.tree) > 1:
                    proctree.remember(self.seen, self.tree[1:])
            used_kb, hwm_kb = proctree.tree_memory_kb(self.tree)
            self.peak_kb = max(self.peak_kb, used_kb, hwm_kb)
            if self.child.poll() is not None:
                return "exited"
            if used_kb > self.cap_kb:
                return "watchdog"
            if timeout_s is not None and now - started > timeout_s:
                return "timeout"
            fast = used_kb > FAST_ABOVE * self.cap_kb or (FAST_WHEN_FORKED and len(self.tree) > 1)
            time.sleep(FAST_INTERVAL_S if fast else SLOW_INTERVAL_S)


def _end_call(
    child: subprocess.Popen[bytes] | spare.ForkedChild,
    seen: dict[int, int],
    group: call_cgroup.CallGroup | None,
) -> None:
    """SIGKILL the child, its process group, every descendant seen and everything in the
    call's cgroup; reap the child and wait until every one is gone."""
    if child.pid is not None:  # None: a fork that never happened
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)  # ESRCH: a forked child not yet in its session
        child.kill()
    if group is not None:  # ended and reaped with those seen; the cgroup then catches forks
        proctree.remember(seen, [pid for pid in group.pids() if pid != child.pid])
    left = proctree.end(seen)
    if group is not None:
        left += group.end(proctree.END_WAIT_S)
    if child.pid is not None:
        child.wait()
    if left:
        log.warning("a guarded call's processes %s outlived SIGKILL", sorted(set(left)))


def current_cap_mb() -> float | None:
    """The cap of the guarded child this code runs in ($HEADROOM_CAP_MB, set by the guard),
    or None outside one. For code deep in a body that sizes buffers from the cap."""
    try:
        return float(os.environ["HEADROOM_CAP_MB"]) or None
    except (KeyError, ValueError):
        return None


def duckdb_share(fraction: float = 0.4, default_mb: float = 256.0, floor_mb: float = 64.0) -> str:
    """A DuckDB memory_limit of ``fraction`` of this child's cap (the rest holds Arrow buffers
    and the interpreter), or ``default_mb`` outside a guarded child."""
    from headroom.units import duckdb_limit

    cap = current_cap_mb()
    return duckdb_limit(max(floor_mb, cap * fraction) if cap else default_mb)


__all__ = ["GuardResult", "run_guarded", "run_guarded_measured", "callable_path", "MIB"]
