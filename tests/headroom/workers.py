"""Guarded bodies for the tests: top-level, importable, no prefect."""

from __future__ import annotations

import os
import signal
import time


def add(a: int, b: int) -> int:
    return a + b


def allocate(mib: int, step_mib: int = 50, hold_s: float = 0.0) -> int:
    """Touch ``mib`` MiB in steps, like a growing DataFrame."""
    blocks = []
    for _ in range(0, mib, step_mib):
        blocks.append(bytearray(step_mib << 20))  # bytearray zero-fills: pages are touched
    time.sleep(hold_s)
    return len(blocks)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def raise_memory_error() -> None:
    raise MemoryError("pretend the allocator failed")


def raise_value_error(text: str) -> None:
    raise ValueError(text)


def sleep_forever() -> None:
    while True:
        time.sleep(1)


def duckdb_big_sort(memory_limit: str = "32MiB") -> int:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit='{memory_limit}'")
    con.execute("SET temp_directory=''")
    con.execute("SET threads=1")
    con.execute("SET preserve_insertion_order=false")
    return con.execute(
        "SELECT count(*) FROM (SELECT md5(i::VARCHAR) AS h FROM range(20000000) t(i) ORDER BY h)"
    ).fetchone()[0]


def spawn_and_wait(pidfile: str) -> None:
    """Write our pid, then block: the test kills our parent."""
    with open(pidfile, "w") as handle:
        handle.write(str(os.getpid()))
    sleep_forever()


def chunked_job(total_rows: int, rows_per_chunk: int, bytes_per_row: int = 1024) -> int:
    """A job whose memory grows with its chunk size: holds one chunk of rows at a time."""
    done = 0
    while done < total_rows:
        rows = min(rows_per_chunk, total_rows - done)
        buffer = bytearray(rows * bytes_per_row)
        done += rows
        del buffer
    return done


def started_at() -> float:
    """When this process was started (epoch seconds)."""
    import psutil

    return psutil.Process().create_time()


def environment_value(name: str) -> str | None:
    return os.environ.get(name)


def parents() -> tuple[int, int]:
    """(this process, its parent)."""
    return os.getpid(), os.getppid()


def write_pid_and_wait(pidfile: str) -> None:
    """Write this process's pid, then wait to be killed."""
    with open(pidfile, "w") as handle:
        handle.write(str(os.getpid()))
    while True:
        time.sleep(0.05)


def spin(seconds: float) -> float:
    """Burn ``seconds`` of CPU time; returns the CPU time used."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return time.process_time() - start
