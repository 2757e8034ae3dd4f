"""Guard benchmark: a body whose children allocate at once, under a cap (issue 18).

Three children, each in its own session, allocate 150 MiB at once under a 200 MiB cap, with a
cgroup per call, with the /proc fallback (HEADROOM_CGROUP=0), and with the fallback as it was
before (tree walked every 200 ms), in the same run; then what each mode costs.

python -m bench.bench_guard_tree
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from bench.bench_guard import _guarded_calls
from bench.common import ROOT, table, write_section
from headroom.isolation.cgroup import ENV_CGROUP, available

CAP_MB = 200
RUNS = 5
CALLS = 10
_MODE_SCRIPT = """
import json, math, shutil, sys, tempfile, time
from headroom import OutOfMemory
from headroom.isolation import guard
from headroom import run_guarded
from bench.bodies_tree import allocating_children, held_at_once, pause
if sys.argv[1] == "before":  # the watch as it was: the tree walked every 200 ms
    guard.TREE_REFRESH_S, guard.FAST_WHEN_FORKED = 0.2, False
cap, runs = float(sys.argv[2]), int(sys.argv[3])
found = {"runs": []}
for _ in range(runs):
    logs = tempfile.mkdtemp()
    try:
        run_guarded(allocating_children, 3, 150, logs, cap_mb=cap)
        kind, peak = "none", math.nan
    except OutOfMemory as error:
        kind, peak = error.kind, error.peak_mb
    found["runs"].append([kind, peak, held_at_once(logs)])
    shutil.rmtree(logs)
cpu = time.process_time()
run_guarded(pause, 3.0, cap_mb=cap)
found["watch_cpu_ms_per_s"] = (time.process_time() - cpu) / 3.0 * 1000
print(json.dumps(found))
"""
MODES = {
    # label: (script mode, environment)
    "cgroup per call": ("now", {}),
    "fallback (HEADROOM_CGROUP=0)": ("now", {ENV_CGROUP: "0"}),
    "fallback before issue 18 (tree every 200 ms)": ("before", {ENV_CGROUP: "0"}),
}


def _mode(script_mode: str, env: dict[str, str]) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", _MODE_SCRIPT, script_mode, str(CAP_MB), str(RUNS)],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return json.loads(output)


def main() -> None:
    rows = []
    for label, (script_mode, env) in MODES.items():
        if not env and not available():
            rows.append([label, "no writable memory cgroup here", "", "", "", "", ""])
            continue
        found = _mode(script_mode, env)
        guard_peak = max(r[1] for r in found["runs"])
        held = max(r[2] for r in found["runs"])
        kinds = ", ".join(sorted({r[0] for r in found["runs"]}))
        calls, cpu = _guarded_calls("bench.bodies_duckdb:noop", env, CALLS)
        _, cpu_one = _guarded_calls("bench.bodies_duckdb:noop", env, 1)
        rows.append(
            [
                label,
                f"{guard_peak:.0f} ({guard_peak / CAP_MB:.2f}x)",
                f"{held} ({held / CAP_MB:.2f}x)",
                kinds,
                f"{found['watch_cpu_ms_per_s']:.1f}",
                f"{statistics.median(calls) * 1000:.0f} ms",
                f"{(cpu - cpu_one) / (CALLS - 1) * 1000:.0f} ms",
            ]
        )
    markdown = "\n\n".join(
        [
            "## Guard: children that allocate at once (issue 18)",
            f"A body starts 3 children, each in its own session, each allocating 150 MiB in "
            f"10 MiB steps, under a {CAP_MB} MiB cap; worst of {RUNS} runs. Guard peak = the "
            "watchdog's largest sample of the tree (RssAnon+RssShmem, or the processes' "
            "anonymous high-water marks); children held = the most the children held at one "
            "moment by their own timestamped logs (their interpreters not counted). Target: "
            "overshoot ≤ 10 % of the cap. Watch CPU = the guarding process's CPU per second "
            "of a body that sleeps 3 s. Forked call = a no-op call of a DuckDB-importing module "
            f"forked by its fork server, median of {CALLS}, and the tree's CPU per call (as in "
            "the guard section).",
            table(
                [
                    "mode",
                    "guard peak MiB",
                    "children held MiB",
                    "ended as",
                    "watch CPU ms/s",
                    "forked call",
                    "CPU per call",
                ],
                rows,
            ),
        ]
    )
    write_section("guard-tree", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
