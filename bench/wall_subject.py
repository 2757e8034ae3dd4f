"""One subject of bench_wall, run in its own process on the embedded default: a flow run with
no work, or one workload's demo (its small size). Writes the slot-acquisition latencies of the
run to a JSON file: the engine's tag slots (timed around Prefect's acquisition call) and
headroom's memory-mb slots (headroom.prefect.leases.acquired_s). The issue's sizes (``LARGE``) read
input that bench_wall generated beforehand in DATA (fraud_synth generates its own).

    python -m bench.wall_subject SUBJECT WORKDIR OUT_JSON [DATA]
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import time
from collections.abc import Callable
from datetime import date
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


def fraud_synth(size: str, workdir: str, data: str) -> None:
    """fraud_synth at the issue's sizes, 2 workers (as bench_fraud_synth runs it)."""
    from flows.fraud_synth.flow import generate_fraud_dataset

    generate_fraud_dataset(size=size, out=str(Path(workdir) / "fraud"), max_workers=2)


def iso_lmp_2000(workdir: str, data: str, files_per_task: int | None = None) -> None:
    """iso_lmp's flow over bench_iso_lmp's day-ahead files of 2,000 nodes (generated in DATA);
    ``files_per_task`` replaces the flow's FILES_PER_TASK (an experiment: more, smaller tasks
    than its one per ISO)."""
    from flows.iso_lmp import flow
    from flows.iso_lmp.flow import convert_iso_lmp

    if files_per_task:
        flow.FILES_PER_TASK = files_per_task

    meta = json.loads((Path(data) / "manifest.json").read_text())
    convert_iso_lmp(
        iso=list(meta["isos"]),
        start=date.fromisoformat(meta["start"]),
        end=date.fromisoformat(meta["end"]),
        markets=["DAY_AHEAD_HOURLY"],
        raw=data,
        out=str(Path(workdir) / "dataset"),
    )


def mitma_od_2(workdir: str, data: str) -> None:
    """mitma_od's ingestion as bench_mitma_od runs it at scale 2 (15 files x 2 M rows)."""
    from bench.bench_mitma_od import run_ours

    meta = json.loads((Path(data) / "manifest.json").read_text())
    run_ours(Path(data), meta["params"]["days"], str(Path(workdir) / "od.duckdb"))


LARGE: dict[str, Callable[..., None]] = {
    "fraud_synth_1gb": functools.partial(fraud_synth, "1GB"),
    "fraud_synth_10gb": functools.partial(fraud_synth, "10GB"),
    "iso_lmp_2000": iso_lmp_2000,
    "iso_lmp_2000_split": functools.partial(iso_lmp_2000, files_per_task=183),
    "mitma_od_2": mitma_od_2,
}


def main(subject: str, workdir: str, out: str, data: str = "") -> None:
    from headroom.prefect import leases

    tag: list[float] = []
    requests: list[float] = []
    locked: list[float] = []
    _time_tag_slots(tag, requests, locked)
    began = time.monotonic()
    if subject == "no_work":
        no_work()
    elif subject in LARGE:
        LARGE[subject](workdir, data)
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
    main(*sys.argv[1:5])
