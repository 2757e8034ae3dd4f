"""Guard benchmark: child start-up and per-call cost, and overshoot past the cap.

python -m bench.bench_guard
"""

from __future__ import annotations

import os
import statistics
import time

from bench.bodies import allocate_numpy, noop
from bench.common import table, write_section
from headroom import OutOfMemory, run_guarded, run_guarded_measured
from headroom.spare import ENV_SPARE

CALLS = 10


def _guarded_calls(spare: bool) -> list[float]:
    """Seconds of CALLS guarded calls, back to back (a real task's body runs between them)."""
    os.environ[ENV_SPARE] = "1" if spare else "0"
    seconds = []
    try:
        for _ in range(CALLS):
            started = time.perf_counter()
            run_guarded(noop, cap_mb=500)
            seconds.append(time.perf_counter() - started)
            if spare:
                time.sleep(1.0)  # the next spare's start-up overlaps this "work"
    finally:
        os.environ.pop(ENV_SPARE, None)
    return seconds


def startup() -> list[list[object]]:
    in_process = []
    for _ in range(CALLS):
        started = time.perf_counter()
        noop()
        in_process.append(time.perf_counter() - started)
    rows: list[list[object]] = [
        ["in-process call", f"{statistics.median(in_process) * 1e6:.1f} µs", "", ""]
    ]
    for label, spare in (
        ("guarded call, fresh child (spares off)", False),
        ("guarded call, spare child started during the previous call", True),
    ):
        guarded = _guarded_calls(spare)
        median = statistics.median(guarded)
        rows.append(
            [
                f"{label}; body module imports numpy, pyarrow, duckdb",
                f"{median * 1000:.0f} ms",
                f"{max(guarded) * 1000:.0f} ms",
                "met" if median < 0.5 else "NOT met",
            ]
        )
    return rows


def overshoot() -> list[list[object]]:
    rows = []
    for cap in (500, 1000, 2000):
        for step in (100, 400):
            peaks = []
            for _ in range(3):
                try:
                    run_guarded_measured(allocate_numpy, cap * 3, step, cap_mb=cap)
                    peaks.append(float("nan"))
                except OutOfMemory as error:
                    peaks.append(error.peak_mb or 0.0)
            worst = max(peaks)
            ratio = worst / cap
            target = "met" if ratio <= 1.10 else ("NOT met" if step == 100 else "reported")
            rows.append([cap, step, f"{worst:.0f}", f"{ratio:.3f}", target])
    return rows


def main() -> None:
    start = startup()
    over = overshoot()
    markdown = "\n\n".join(
        [
            "## Guard (issue 2)",
            "Start-up and per-call cost of `run_guarded` against calling in-process; median of "
            f"{CALLS} calls. Target: start-up < 0.5 s. A spare child (on by default) is started "
            "while the previous call runs and has imported the body's module by the next call; "
            "the first call of a process, and every call with `HEADROOM_SPARE_CHILD=0`, starts "
            "a fresh child.",
            table(["call", "median", "worst", "target"], start),
            "Overshoot past the cap of a fast allocator (`np.ones` in steps), worst of 3 runs. "
            "Peak = the watchdog's largest sample of the child's RssAnon+RssShmem. Target: "
            "peak ≤ cap + 10 % with 100 MiB steps (400 MiB steps reported).",
            table(["cap MiB", "step MiB", "peak MiB", "peak / cap", "target"], over),
            "Allocator hygiene (malloc_trim, Arrow pool release) between chunks is left out: "
            "every attempt runs in a fresh child, whose memory goes back to the OS when it exits.",
        ]
    )
    write_section("guard", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
