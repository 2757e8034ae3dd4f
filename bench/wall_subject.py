"""One subject of bench_wall, run in its own process on the embedded default: a flow run with
no work, or one workload's demo (its small size). Writes the slot-acquisition latencies of the
run to a JSON file: the engine's tag slots (timed around Prefect's acquisition call) and
headroom's memory-mb slots (headroom.prefect.leases.acquired_s).

    python -m bench.wall_subject SUBJECT WORKDIR OUT_JSON
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

from flows import WORKLOADS

DEMOS = {w.name: w.module for w in WORKLOADS}


def _time_tag_slots(record: list[float], requests: list[float], locked: list[float]) -> None:
    """Time every acquisition the task engine makes (its `concurrency()` calls this), and each
    request it sends for one: answered (``requests``) or refused as full (423, ``locked``)."""
    from prefect.client.orchestration import PrefectClient
    from prefect.concurrency import _sync

    original = _sync.acquire_concurrency_slots_with_lease

    def timed(*args, **kwargs):
        began = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            record.append(time.monotonic() - began)

    _sync.acquire_concurrency_slots_with_lease = timed
    send = PrefectClient.increment_concurrency_slots_with_lease

    async def timed_request(self, *args, **kwargs):
        began = time.monotonic()
        try:
            response = await send(self, *args, **kwargs)
        except Exception as exc:
            if getattr(getattr(exc, "response", None), "status_code", None) == 423:
                locked.append(time.monotonic() - began)
            raise
        requests.append(time.monotonic() - began)
        return response

    PrefectClient.increment_concurrency_slots_with_lease = timed_request


def no_work() -> None:
    """A headroom flow (its hooks: limits made ready, report) whose one budgeted task runs a
    guarded child that does nothing."""
    from prefect import flow

    from headroom.prefect import FLOW_HOOKS, budgeted_task

    noop = budgeted_task("bench.bodies_noop:noop", tag="fraud-gen")

    @flow(name="no-work", **FLOW_HOOKS)  # type: ignore[arg-type]
    def no_work_flow() -> None:
        noop()

    no_work_flow()


def fraud_synth_1gb(workdir: str) -> None:
    """fraud_synth at the issue's size: 1 GB, 2 workers (as bench_fraud_synth runs it)."""
    from flows.fraud_synth.flow import generate_fraud_dataset

    generate_fraud_dataset(size="1GB", out=str(Path(workdir) / "fraud"), max_workers=2)


def main(subject: str, workdir: str, out: str) -> None:
    from headroom.prefect import leases

    tag: list[float] = []
    requests: list[float] = []
    locked: list[float] = []
    _time_tag_slots(tag, requests, locked)
    began = time.monotonic()
    if subject == "no_work":
        no_work()
    elif subject == "fraud_synth_1gb":
        fraud_synth_1gb(workdir)
    else:
        importlib.import_module(DEMOS[subject]).demo(Path(workdir))
    Path(out).write_text(
        json.dumps(
            {
                "tag_s": tag,
                "tag_request_s": requests,
                "tag_locked_s": locked,
                "memory_s": list(leases.acquired_s),
                "in_process_s": time.monotonic() - began,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
