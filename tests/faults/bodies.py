"""Guarded bodies that start processes of their own: top-level, importable, no prefect."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

# A process that allocates ``mib`` MiB in 10 MiB steps (touched), logging
# "<monotonic ns> <MiB held>" after each step, then holds it.
ALLOCATOR = """
import sys, time
log = open(sys.argv[2], "w", buffering=1)
blocks = []
for _ in range(int(sys.argv[1]) // 10):
    blocks.append(bytearray(10 << 20))
    log.write(f"{time.monotonic_ns()} {len(blocks) * 10}\\n")
time.sleep(float(sys.argv[3]))
"""


def _allocator(mib: int, log: Path, hold_s: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", ALLOCATOR, str(mib), str(log), str(hold_s)],
        start_new_session=True,  # out of the body's process group and session
    )


def grandchild_then(outcome: str, log_dir: str, settle_s: float = 0.0) -> int:
    """Start a grandchild in its own session holding 50 MiB, wait until it holds them, then
    return its pid ("return"), raise ("error") or run out of memory ("oom")."""
    log = Path(log_dir, "grandchild.log")
    grandchild = _allocator(50, log, 3600)
    Path(log_dir, "grandchild.pid").write_text(str(grandchild.pid))
    while not log.exists() or not log.read_text().rstrip().endswith(" 50"):
        time.sleep(0.005)
    time.sleep(settle_s)
    if outcome == "error":
        raise ValueError("the body failed with its grandchild running")
    if outcome == "oom":
        blocks = []
        while True:
            blocks.append(bytearray(20 << 20))
    return grandchild.pid


def allocating_children(children: int, mib: int, log_dir: str) -> int:
    """Start ``children`` processes at once, each allocating ``mib`` MiB; wait for them."""
    started = [_allocator(mib, Path(log_dir, f"child-{n}.log"), 0.5) for n in range(children)]
    codes = [p.wait() for p in started]
    if any(codes):
        raise RuntimeError(f"allocating children ended with {codes}")
    return children


def fill_tmpfs(path: str, mib: int) -> int:
    """Write ``mib`` MiB to a file on tmpfs: memory that no process maps, so /proc shows it
    in no process's RSS, but the kernel charges it to the writer's cgroup."""
    block = b"\x01" * (1 << 20)
    with open(path, "wb") as handle:
        for _ in range(mib):
            handle.write(block)
    return mib


def peak_held(log_dir: str | Path) -> tuple[int, int]:
    """(largest MiB the allocating children held at one moment, by their own logs; children
    that logged at all)."""
    events = []
    logs = sorted(Path(log_dir).glob("child-*.log"))
    for log in logs:
        held = 0
        for line in log.read_text().splitlines():
            stamp, mib = (int(v) for v in line.split())
            events.append((stamp, mib - held))
            held = mib
    total = peak = 0
    for _, delta in sorted(events):
        total += delta
        peak = max(peak, total)
    return peak, sum(1 for log in logs if log.read_text())
