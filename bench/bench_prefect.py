"""Prefect integration benchmark: slot utilisation under a tag limit, and the overhead of a
budgeted task against a plain one.

    python -m bench.bench_prefect

Runs on its own temporary Prefect server (ephemeral, SQLite) with a bench-only tag limit.
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
def headroom_way() -> list[dict]:
    """Budgeted tasks submitted in waves of the tag's slots; the tag limit stays the cap."""
    outcomes = map_bounded(
        budgeted_sleep,
        [{"seconds": SECONDS, "label": str(i)} for i in range(TASKS)],
        max_workers=SLOTS,
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


def main() -> None:
    from deployments.setup import apply_limits

    apply_limits()
    one_plain(0.1)  # warm the server and imports
    bare = _utilisation(bare_tag_limit)
    ours = _utilisation(headroom_way)
    plain = _task_seconds(one_plain, 5.0)
    budgeted = _task_seconds(one_budgeted, 5.0)
    overhead = budgeted / plain - 1
    util_rows = [
        [
            "bare tag limit (all 30 submitted)",
            bare[0],
            f"{bare[1]:.0%}",
            bare[2],
            "met" if bare[1] >= 0.9 else "NOT met",
        ],
        [
            "headroom (waves of 3 + tag limit)",
            ours[0],
            f"{ours[1]:.0%}",
            ours[2],
            "met" if ours[1] >= 0.9 else "NOT met",
        ],
    ]
    markdown = "\n\n".join(
        [
            "## Prefect integration (issue 3)",
            f"Utilisation: {TASKS} tasks of {SECONDS:.0f} s under a tag limit of {SLOTS} "
            f"(ideal {IDEAL:.0f} s). Utilisation = task-seconds / ({SLOTS} x span from first "
            "start to last end). Target ≥ 90 %.",
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
    main()
