"""Idempotent set-up of a Prefect server for headroom: limits, work pool, blocks.

    python -m deployments.setup            # create or update everything, repair leaked slots
    python -m deployments.setup --check    # print what would be set, change nothing

Creates every tag limit declared in deployments/limits.toml (a tag without a limit is
unlimited in Prefect), the per-host memory limit ``memory-mb:<hostname>`` sized to the budget
minus the orchestrator's reserve, the process work pool, the GPU share variable, and the
block types. Slots leaked by killed runs are given back when no run is active.
"""

from __future__ import annotations

import argparse
import logging

from headroom.budget import Budget
from headroom.limits import Limits
from headroom.prefect import planned_limits
from headroom.prefect.local_server import crash_dead_runs, give_back_stranded
from headroom.units import format_mib

log = logging.getLogger("deployments.setup")

WORK_POOL = "headroom-process"
GPU_SHARE_VARIABLE = "headroom_gpu_task_mb"
# Flow runs of the pool heartbeat this often (Prefect allows no less than 30 s; its default is
# 180 s); the zombie-run automation marks a run Crashed after three periods without one.
FLOW_HEARTBEAT_S = 30
HEARTBEAT_VARIABLE = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


def apply_limits(limits: Limits | None = None, budget: Budget | None = None) -> dict[str, int]:
    """Create or resize every limit; crash dead runs of this host; give back leaked slots when
    no run is active."""
    from prefect.client.orchestration import get_client

    plan = planned_limits(limits, budget)
    with get_client(sync_client=True) as client:
        for name, size in plan.items():
            client.upsert_global_concurrency_limit_by_name(name, size)
        crash_dead_runs(client)
        give_back_stranded(client, list(plan))
    return plan


def ensure_work_pool(name: str = WORK_POOL) -> None:
    """The process work pool that workers on every host serve, its flow runs' heartbeat period
    pinned in the pool's job template, whatever the environment of the worker that starts them:
    the zombie-run automation's window assumes that period."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            template = ProcessWorker.get_default_base_job_template()
            _pin_heartbeat(template)
            client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=template)
            )
        except ObjectAlreadyExists:
            template = client.read_work_pool(name).base_job_template
            if _pin_heartbeat(template):
                client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))


def _pin_heartbeat(template: dict) -> bool:
    """Set the heartbeat variable in the template's default env; True if that changed it."""
    env = template["variables"]["properties"]["env"]
    default = dict(env.get("default") or {})
    if default.get(HEARTBEAT_VARIABLE) == str(FLOW_HEARTBEAT_S):
        return False
    env["default"] = {**default, HEARTBEAT_VARIABLE: str(FLOW_HEARTBEAT_S)}
    return True


def record_gpu_share(limits: Limits | None = None) -> float | None:
    """GPU memory per GPU task = the first GPU's total / the gpu tag's slots, fixed here."""
    from prefect.variables import Variable

    limits = limits or Limits.load()
    devices = Budget.gpu()
    if not devices or "gpu" not in limits.tags:
        return None
    share = devices[0].total_mb / limits.tags["gpu"].slots
    Variable.set(GPU_SHARE_VARIABLE, round(share, 1), overwrite=True)
    return share


def setup() -> dict[str, object]:
    """Everything, in order; returns what was applied."""
    from headroom.prefect.blocks import register_blocks

    plan = apply_limits()
    ensure_work_pool()
    slugs = register_blocks()
    share = record_gpu_share()
    from deployments.production.automations import ensure_automations

    automation = ensure_automations()
    return {
        "limits": plan,
        "work_pool": WORK_POOL,
        "blocks": slugs,
        "gpu_task_mb": share,
        "automation": automation,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print the plan, change nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per API request
    if args.check:
        for name, size in planned_limits().items():
            unit = f" ({format_mib(size)})" if name.startswith("memory-mb:") else " slots"
            print(f"{name}: {size}{unit}")
        return
    applied = setup()
    for name, size in applied["limits"].items():  # type: ignore[union-attr]
        print(f"limit {name}: {size}")
    print(f"work pool {applied['work_pool']}; blocks {', '.join(applied['blocks'])}")  # type: ignore[arg-type]
    if applied["gpu_task_mb"]:
        print(f"GPU memory per gpu task: {applied['gpu_task_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
