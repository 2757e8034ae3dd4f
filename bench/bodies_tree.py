"""Bodies for the guard's process-tree benchmark: a body that starts allocating children."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

# Allocates argv[1] MiB in 10 MiB steps (touched), logging "<monotonic ns> <MiB held>".
ALLOCATOR = """
import sys, time
log = open(sys.argv[2], "w", buffering=1)
blocks = []
for _ in range(int(sys.argv[1]) // 10):
    blocks.append(bytearray(10 << 20))
    log.write(f"{time.monotonic_ns()} {len(blocks) * 10}\\n")
time.sleep(0.5)
"""


def allocating_children(children: int, mib: int, log_dir: str) -> int:
    """Start ``children`` processes at once, each in its own session, each allocating
    ``mib`` MiB; wait for them."""
    started = [
        subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", ALLOCATOR, str(mib), f"{log_dir}/child-{n}.log"],
            start_new_session=True,
        )
        for n in range(children)
    ]
    codes = [p.wait() for p in started]
    if any(codes):
        raise RuntimeError(f"allocating children ended with {codes}")
    return children


def held_at_once(log_dir: str) -> int:
    """The most MiB the children held at one moment, by their own logs."""
    events = []
    for log in Path(log_dir).glob("child-*.log"):
        held = 0
        for line in log.read_text().splitlines():
            stamp, mib = (int(v) for v in line.split())
            events.append((stamp, mib - held))
            held = mib
    total = peak = 0
    for _, delta in sorted(events):
        total += delta
        peak = max(peak, total)
    return peak


def pause(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
