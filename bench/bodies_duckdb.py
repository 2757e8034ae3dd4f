"""A body module that imports DuckDB only (as mitma_od's does): its import leaves one thread,
so its calls are forked from a fork server (headroom.isolation.forkserver)."""

from __future__ import annotations

import duckdb  # noqa: F401 - start-up cost of a realistic body module


def noop() -> int:
    return 0
