"""Bodies the benchmarks run in guarded children (no prefect import)."""

from __future__ import annotations

import time

import duckdb  # noqa: F401 - start-up cost of a realistic body module
import numpy as np
import pyarrow  # noqa: F401


def noop() -> int:
    return 1


def busy(seconds: float) -> float:
    """Burn CPU for ``seconds`` (a stand-in for a real job)."""
    end = time.perf_counter() + seconds
    total = 0.0
    while time.perf_counter() < end:
        total += float(np.sum(np.arange(1000)))
    return total


def sleep(seconds: float, label: str = "") -> dict[str, float]:
    started = time.time()
    time.sleep(seconds)
    return {"started": started, "ended": time.time()}


def allocate_numpy(total_mib: int, step_mib: int) -> int:
    """Fill memory in steps as fast as numpy can (np.ones writes every page)."""
    blocks = [np.ones(step_mib << 20, dtype=np.uint8) for _ in range(0, total_mib, step_mib)]
    return len(blocks)
