"""One reading of a raised error as an out-of-memory kind (headroom.errors.classify_oom)."""

from __future__ import annotations

import duckdb
import pytest

from headroom.errors import ChunkFloorReached, OutOfMemory, classify_oom


def test_duckdb_out_of_its_memory_limit_is_an_allocator_oom():
    db = duckdb.connect()
    db.execute("SET memory_limit = '8MB'")
    db.execute("SET threads = 1")
    db.execute("SET preserve_insertion_order = false")
    with pytest.raises(duckdb.OutOfMemoryException) as caught:
        db.execute("SELECT list(i::VARCHAR || repeat('x', 64)) FROM range(2000000) t(i)").fetchall()
    assert classify_oom(caught.value) == "allocator"


def test_kinds_of_other_errors():
    assert classify_oom(MemoryError()) == "allocator"
    assert classify_oom(OutOfMemory("watchdog", 100.0, 120.0)) == "watchdog"
    assert classify_oom(RuntimeError("CUDA error: out of memory")) == "gpu"
    assert classify_oom(ChunkFloorReached("floor")) is None  # a MemoryError of headroom's own
    assert classify_oom(ValueError("out of memory")) is None  # text alone names no CUDA
    assert classify_oom(RuntimeError("CUDA error: device-side assert")) is None
