"""Prefect integration benchmark: slot utilisation under a tag limit, and the overhead of a
budgeted task against a plain one.

    python -m bench.bench_prefect

Each measurement runs in its own process against its own Prefect server on a throw-away
PostgreSQL database (127.0.0.1:5432), with a bench-only tag limit.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

STATE = Path(tempfile.mkdtemp(prefix="headroom-bench-prefect-"))
ROOT = Path(__file__).resolve().parent.parent
os.environ["PREFECT_HOME"] = str(STATE / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ["HEADROOM_STATE_DIR"] = str(STATE / "headroom")
os.environ.setdefault("HEADROOM_MEMORY_LIMIT", "6GiB")
(STATE / "limits.toml").write_text(
    (ROOT / "deployments" / "limits.toml").read_text()
    + '\n[tags.bench-three]\nslots = 3\ncap = "200MiB"\n'
    + '\n[tags.bench-one]\nslots = 4\ncap = "500MiB"\n'
)
os.environ["HEADROOM_LIMITS"] = str(STATE / "limits.toml")

from prefect import flow, task  # noqa: E402

from bench import bodies  # noqa: E402
from bench.common import table, write_section  # noqa: E402
from headroom.prefect import budgeted_task, map_bounded  # noqa: E402

TASKS, SECONDS, SLOTS = 30, 2.0, 3
IDEAL = TASKS * SECONDS / SLOTS

plain_sleep = task(bodies.sleep, name="plain-sleep", tags=["bench-three"])
budgeted_sleep = budgeted_task(bodies.sleep, tag="bench-three", name="budgeted-sleep")
plain_busy = task(bodies.busy, name="plain-busy")
budgeted_busy = budgeted_task(bodies.busy, tag="bench-one", name="budgeted-busy")


@flow
def bare_tag_limit() -> list[dict]:
    """Every task submitted at once; only the tag limit throttles."""
    futures = plain_sleep.map(seconds=[SECONDS] * TASKS, label=[str(i) for i in range(TASKS)])
    return [f.result() for f in futures]


@flow
def headroom_way(max_workers: int = SLOTS) -> list[dict]:
    """Budgeted tasks, at most max_workers submitted at once; the tag limit stays the cap."""
    outcomes = map_bounded(
        budgeted_sleep,
        [{"seconds": SECONDS, "label": str(i)} for i in range(TASKS)],
        max_workers=max_workers,
    )
    return [o.value for o in outcomes]


@flow
def one_plain(seconds: float) -> float:
    return plain_busy(seconds)


@flow
def one_budgeted(seconds: float) -> float:
    return budgeted_busy(seconds)


def _utilisation(run) -> tuple[float, float, int]:
    started = time.monotonic()
    spans = run()
    elapsed = time.monotonic() - started
    busy = sum(s["ended"] - s["started"] for s in spans)
    first = min(s["started"] for s in spans)
    last = max(s["ended"] for s in spans)
    events = sorted([(s["started"], 1) for s in spans] + [(s["ended"], -1) for s in spans])
    live = most = 0
    for _, step in events:
        live += step
        most = max(most, live)
    return elapsed, busy / (SLOTS * (last - first)), most


def _task_seconds(run, seconds: float, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        state = run(seconds, return_state=True)
        assert state.is_completed()
        times.append(_task_run_seconds(state))
    return statistics.median(times)


def _task_run_seconds(flow_state) -> float:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])
            )
        )
    return max(r.total_run_time.total_seconds() for r in runs)


# (label, way, max_workers, server's slot wait cap in s or None for Prefect's default)
WAYS = [
    ("bare tag limit (all 30 submitted at once)", "bare", TASKS, None),
    ("headroom: map_bounded, 3 in flight (= slots)", "ours", SLOTS, None),
    ("headroom: 6 submitted ahead, server slot wait ≤ 0.5 s", "ours", 2 * SLOTS, 0.5),
]


def _part(argv: list[str]) -> None:
    """One measurement in this process (its own ephemeral server); prints JSON."""
    import json

    from deployments.setup import apply_limits

    apply_limits()
    one_plain(0.1)  # warm the server and imports
    if argv[0] == "bare":
        result = _utilisation(bare_tag_limit)
    elif argv[0] == "ours":
        result = _utilisation(lambda: headroom_way(int(argv[1])))
    else:
        result = (_task_seconds(one_plain, 5.0), _task_seconds(one_budgeted, 5.0))
    print("RESULT " + json.dumps(result))


def _run_part(args: list[str], slot_wait_s: float | None) -> list:
    import json
    import subprocess
    import sys

    from deployments.production.throwaway import throwaway_server

    server_env = {}
    if slot_wait_s is not None:
        server_env["PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS"] = str(slot_wait_s)
    # A PostgreSQL-backed server, as in production: SQLite's write lock answers concurrent
    # task runs with 503s and seconds of back-off, which would measure SQLite, not hand-over.
    with throwaway_server(STATE / f"server-{args[0]}", server_env) as url:
        output = subprocess.run(
            [sys.executable, "-m", "bench.bench_prefect", "--part", *args],
            cwd=ROOT,
            env={**os.environ, "PREFECT_API_URL": url},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    line = [x for x in output.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    util_rows = []
    for label, way, workers, slot_wait in WAYS:
        elapsed, utilisation, most = _run_part([way, str(workers)], slot_wait)
        util_rows.append(
            [label, elapsed, f"{utilisation:.0%}", most, "met" if utilisation >= 0.9 else "NOT met"]
        )
    plain, budgeted = _run_part(["overhead"], None)
    overhead = budgeted / plain - 1
    markdown = "\n\n".join(
        [
            "## Prefect integration (issue 3)",
            f"Utilisation: {TASKS} tasks of {SECONDS:.0f} s under a tag limit of {SLOTS} "
            f"(ideal {IDEAL:.0f} s), each way on its own PostgreSQL-backed server. Utilisation "
            f"= task-seconds / ({SLOTS} x span from first start to last end). Target ≥ 90 %.",
            table(["way", "elapsed s", "utilisation", "peak concurrency", "target"], util_rows),
            "Overhead of a budgeted task (admission on memory-mb:<host>, guarded child, "
            "history, artifact) against a plain task running the same 5 s CPU job in-process; "
            "task-run time from the server, median of 3. Target ≤ 5 %.",
            table(
                ["plain task s", "budgeted task s", "overhead", "target"],
                [[plain, budgeted, f"{overhead:+.1%}", "met" if overhead <= 0.05 else "NOT met"]],
            ),
        ]
    )
    write_section("prefect", markdown)
    print(markdown)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--part"]:
        _part(sys.argv[2:])
    else:
        main()
