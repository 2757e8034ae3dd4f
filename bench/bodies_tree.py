"""Bodies for the guard's process-tree benchmark: the fault tests' allocating children (one
definition, tests/faults/bodies.py) and a body that only waits."""

from __future__ import annotations

import time

from tests.faults.bodies import allocating_children, peak_held

__all__ = ["allocating_children", "held_at_once", "pause"]


def held_at_once(log_dir: str) -> int:
    """The most MiB the children held at one moment, by their own logs."""
    return peak_held(log_dir)[0]


def pause(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
