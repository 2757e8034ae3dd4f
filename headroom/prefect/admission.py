"""Memory admission: the per-host ``memory-mb`` slots an attempt holds for its cap, CPU slots for
single-threaded bodies, and the budget and limits they are sized from."""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from headroom.budget import Budget
from headroom.errors import (
    TerminalError,
)
from headroom.limits import Limits, memory_limit_name, setup_hint
from headroom.prefect import leases

if TYPE_CHECKING:
    from headroom.prefect.task import BudgetedSpec

_LIMIT_CACHE_S = 30.0


# Memory slots of a lost host come back when their lease expires; Prefect's default is 300 s.
# The engine's tag slots use 60 s, so both come back together.
MEMORY_LEASE_S = 60.0


def _budget_block() -> Any:
    """The saved memory-budget block, or None (none saved, or no server to ask)."""
    try:
        from headroom.prefect.blocks import load_budget_block

        return load_budget_block()
    except Exception:
        return None


def current_budget() -> Budget:
    """The budget: $HEADROOM_MEMORY_LIMIT, else the memory-budget block, else detection."""
    from headroom.budget import ENV_LIMIT

    if os.environ.get(ENV_LIMIT):
        return Budget.detect()
    block = _budget_block()
    if block is not None:
        return Budget.detect(limit=block.limit or None, fraction=block.fraction)
    return Budget.detect()


def current_limits() -> Limits:
    """The declared limits, with the per-tag caps of the memory-budget block applied."""
    limits = Limits.load()
    block = _budget_block()
    if block is not None and block.tag_caps:
        return limits.with_caps(block.tag_caps, "memory-budget block")
    return limits


def planned_limits(limits: Limits | None = None, budget: Budget | None = None) -> dict[str, int]:
    """Every global concurrency limit headroom needs, by name, with its size."""
    limits = limits or current_limits()
    budget = budget or current_budget()
    plan = {f"tag:{tag}": spec.slots for tag, spec in limits.tags.items()}
    plan[memory_limit_name()] = limits.host_limit_mb(budget)
    return plan


@contextlib.contextmanager
def admitted(spec: BudgetedSpec, cap: float):
    """Admission: this process's cores for a CPU-bound body, then ``cap`` MiB of the host's
    memory limit (a lease, so a lost host's memory comes back)."""
    with (
        cpu_slots(spec.threads),
        leases.held(memory_limit_name(), max(1, math.ceil(cap)), MEMORY_LEASE_S),
    ):
        yield


_cpu_lock = threading.Condition()


_cpu_busy = [0]


@contextlib.contextmanager
def cpu_slots(threads: int | None):
    """Hold ``threads`` of this process's cores (all of them at most) for a CPU-bound body;
    a no-op for ``None``. A body that never waits on I/O gains nothing from running beside
    more of its kind than there are cores, and pays for it in CPU time per item."""
    if not threads:
        yield
        return
    from headroom.budget import usable_cores

    cores = usable_cores()
    want = min(threads, cores)
    with _cpu_lock:
        _cpu_lock.wait_for(lambda: _cpu_busy[0] + want <= cores)
        _cpu_busy[0] += want
    try:
        yield
    finally:
        with _cpu_lock:
            _cpu_busy[0] -= want
            _cpu_lock.notify_all()


def server_host_limit(limits: Limits, budget: Budget) -> float:
    """The size of memory-mb:<host> on the server (cached), or a clear error if missing."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    name = memory_limit_name()
    cached = _host_limit_cache.get(name)
    if cached and time.monotonic() - cached[0] < _LIMIT_CACHE_S:
        return float(cached[1])
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            raise TerminalError(
                f"the memory limit {name!r} does not exist on this Prefect server: {setup_hint()}"
            ) from None
    _host_limit_cache[name] = (time.monotonic(), limit)
    return float(limit)


_host_limit_cache: dict[str, tuple[float, int]] = {}
