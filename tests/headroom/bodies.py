"""Bodies of budgeted test tasks: top-level, importable, no prefect."""

from __future__ import annotations

import time


def grow_with_chunk(
    total_rows: int, rows_per_chunk: int, bytes_per_row: int = 1024, hold_s: float = 0.05
) -> dict[str, int]:
    """Holds one chunk of rows at a time: memory grows with the chunk size."""
    done = chunks = 0
    while done < total_rows:
        rows = min(rows_per_chunk, total_rows - done)
        buffer = bytearray(rows * bytes_per_row)
        time.sleep(hold_s)
        done += rows
        chunks += 1
        del buffer
    return {"rows": done, "chunks": chunks, "rows_per_chunk": rows_per_chunk}


def fail_with_value_error(path: str) -> None:
    raise ValueError(f"{path}: line 3: not a number")


def sleep_for(seconds: float, label: str = "") -> dict[str, float]:
    """Sleep and report when: the test reads overlap from the timestamps."""
    started = time.time()
    time.sleep(seconds)
    return {"label": label, "started": started, "ended": time.time()}


def report_cap(cap_mb: float, rows_per_chunk: int) -> dict[str, float]:
    """A body that sizes its own buffers from the cap headroom gives it."""
    return {"cap_mb": cap_mb, "rows_per_chunk": rows_per_chunk}


def grow_then_lose_connection(
    total_rows: int, rows_per_chunk: int, calls_file: str, bytes_per_row: int = 1024
) -> dict[str, int]:
    """Counts its calls in ``calls_file``; its second call loses its connection, the others
    hold one chunk of rows at a time (memory grows with the chunk size)."""
    with open(calls_file, "a+") as handle:
        handle.seek(0)
        calls = len(handle.read().splitlines())
        handle.write(f"{rows_per_chunk}\n")
    if calls == 1:
        raise ConnectionError("the source dropped the connection")
    return grow_with_chunk(total_rows, rows_per_chunk, bytes_per_row)
