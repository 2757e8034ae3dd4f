"""Guard benchmark: child start-up and per-call cost, and overshoot past the cap.

python -m bench.bench_guard
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from bench.bodies import allocate_numpy, noop
from bench.common import ROOT, table, write_section
from headroom import OutOfMemory, run_guarded_measured
from headroom.isolation.forkserver import ENV_FORK
from headroom.isolation.spare import ENV_SPARE

CALLS = 10


MODES = {
    # label: (body, environment)
    "guarded call, fresh child (spares off); body module imports numpy, pyarrow, duckdb": (
        "bench.bodies:noop",
        {ENV_SPARE: "0"},
    ),
    "guarded call, spare child started during the previous call; body module imports numpy, "
    "pyarrow, duckdb": ("bench.bodies:noop", {ENV_SPARE: "1"}),
    "guarded call, fresh child (spares and fork servers off); body module imports duckdb": (
        "bench.bodies_duckdb:noop",
        {ENV_SPARE: "0", ENV_FORK: "0"},
    ),
    "guarded call, forked by the module's fork server; body module imports duckdb": (
        "bench.bodies_duckdb:noop",
        {},
    ),
}
_CALLS_SCRIPT = """
import json, sys, time
from headroom import run_guarded
seconds = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    run_guarded(sys.argv[1], cap_mb=500)
    seconds.append(time.perf_counter() - started)
    time.sleep(0.5)  # a real task's body runs between calls (a spare starts meanwhile)
print(json.dumps(seconds))
"""


def _guarded_calls(body: str, env: dict[str, str], calls: int) -> tuple[list[float], float]:
    """Seconds of ``calls`` guarded calls in a fresh process, and its tree's CPU seconds."""
    process = subprocess.Popen(
        [sys.executable, "-c", _CALLS_SCRIPT, body, str(calls)],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    output = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"guarded calls of {body} failed")
    return json.loads(output), usage.ru_utime + usage.ru_stime


def startup() -> list[list[object]]:
    in_process = []
    for _ in range(CALLS):
        started = time.perf_counter()
        noop()
        in_process.append(time.perf_counter() - started)
    rows: list[list[object]] = [
        ["in-process call", f"{statistics.median(in_process) * 1e6:.1f} µs", "", "", ""]
    ]
    for label, (body, env) in MODES.items():
        guarded, cpu = _guarded_calls(body, env, CALLS)
        _, cpu_one = _guarded_calls(body, env, 1)
        median = statistics.median(guarded)
        rows.append(
            [
                label,
                f"{median * 1000:.0f} ms",
                f"{max(guarded) * 1000:.0f} ms",
                # CPU of the whole tree per further call: (CALLS calls - 1 call) / (CALLS - 1)
                f"{(cpu - cpu_one) / (CALLS - 1) * 1000:.0f} ms",
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
            "a fresh child. A body module whose import leaves the process single-threaded gets a "
            "fork server instead (`HEADROOM_FORK_SERVERS=0` turns it off): each call's child is "
            "forked from a process that already imported the module. Calls run in a fresh "
            "process each way, 0.5 s apart; CPU per call = the process tree's CPU seconds "
            f"(rusage) of {CALLS} calls less those of 1, over {CALLS - 1}.",
            table(["call", "median", "worst", "CPU per call (tree)", "target"], start),
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
