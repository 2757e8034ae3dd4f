"""Flows deployed or run by the production tests. No ``from __future__ import annotations``:
a deployed run resolves its parameters' annotations at run time."""

import os

from prefect import flow

from headroom.prefect import FLOW_HOOKS, ChunkScale, MaxWorkers, budgeted_task, map_bounded
from tests.production import bodies

HOLDERS = {
    tag: budgeted_task(bodies.hold, tag=tag, name=f"hold-{tag}")
    for tag in ("test-three", "test-oom")
}
square = budgeted_task(bodies.square, tag="test-oom", name="square")


@flow(name="hold-slots", **FLOW_HOOKS)
def hold_slots(
    workdir: str, seconds: float = 60.0, tag: str = "test-three", chunk_scale: ChunkScale = 1.0
) -> int:
    """Record this flow-run process's PID, then hold a ``tag`` slot and a memory slot.

    A crash re-run (chunk_scale < 1) records its PID and finishes at once, holding nothing.
    """
    with open(os.path.join(workdir, f"flow-{chunk_scale:g}.pid"), "w") as handle:
        handle.write(str(os.getpid()))
    if chunk_scale < 1:
        return os.getpid()
    marker = os.path.join(workdir, f"holding-{chunk_scale:g}")
    return HOLDERS[tag](marker=marker, seconds=seconds)


@flow(name="squares")
def squares(values: list[int], max_workers: MaxWorkers = 2) -> list[dict]:
    """Square each value in a budgeted task; raise if any item failed."""
    outcomes = map_bounded(square, [{"value": v} for v in values], max_workers=max_workers)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise failed[0].error  # type: ignore[misc]
    return [o.value for o in outcomes]
