"""The zombie-run automation: a flow run whose heartbeats stop is marked Crashed and its
deployment is run again.

    python -m deployments.production.automations [--within SECONDS]   # idempotent

A worker (or ``serve()``) marks a flow run Crashed when its flow-run process dies, and the
flow's on_crashed hook re-runs it there. When the whole host is lost (worker and flow-run
process both gone) nothing is left to do that: the run would stay Running for ever. Flow runs
emit ``prefect.flow-run.heartbeat`` every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (at least
30); this proactive trigger fires when a run that sent one sends neither another heartbeat
nor a final state within ``within`` seconds. Its actions mark the run Crashed (an automation's
state change does not call on_crashed: no process of that run is left to call it) and run the
same deployment again with the lost run's parameters.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import timedelta
from typing import Any
from uuid import UUID

log = logging.getLogger(__name__)

AUTOMATION_NAME = "headroom: crash and re-run flow runs without heartbeats"
ENV_ZOMBIE_AFTER = "HEADROOM_ZOMBIE_AFTER_S"
# Events that prove a run is alive or finished; a state event closes the window for good.
ALIVE_OR_DONE = (
    "prefect.flow-run.heartbeat",
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
    "prefect.flow-run.Paused",  # a suspended run has no process and sends no heartbeats
    "prefect.flow-run.Suspended",
)

# Server-side templating: a JSON value rendered by Jinja from the lost flow run.
SAME_PARAMETERS = {
    "__prefect_kind": "json",
    "value": {"__prefect_kind": "jinja", "template": "{{ flow_run.parameters | tojson }}"},
}


def default_within_s() -> float:
    """$HEADROOM_ZOMBIE_AFTER_S, else three of the heartbeat periods the work pool pins."""
    if os.environ.get(ENV_ZOMBIE_AFTER):
        return float(os.environ[ENV_ZOMBIE_AFTER])
    from deployments.setup import FLOW_HEARTBEAT_S

    return 3.0 * FLOW_HEARTBEAT_S


def heartbeat_automation(within_s: float, name: str = AUTOMATION_NAME) -> Any:
    """The automation, not yet created: no heartbeat for ``within_s`` s -> Crashed + re-run."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState, RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if within_s < 31:
        raise ValueError(
            f"within={within_s:g} s: heartbeats come at most every 30 s, so a window of 30 s or "
            "less would crash healthy runs"
        )
    return Automation(
        name=name,
        description=(
            f"Flow runs that send no heartbeat for {within_s:g} s are marked Crashed and their "
            "deployment is run again (worker and flow-run process lost together)."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect=set(ALIVE_OR_DONE),
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {within_s:g} s: its host was lost (headroom).",
            ),
            # The deployment is inferred from the heartbeat's related resources; the new run
            # gets the lost run's own parameters (rendered by the server from the flow run).
            RunDeployment(source="inferred", parameters=SAME_PARAMETERS),
        ],
    )


def ensure_heartbeat_automation(within_s: float | None = None, name: str = AUTOMATION_NAME) -> UUID:
    """Create the automation, or bring the existing one (by name) up to date; returns its id.

    Without ``within_s`` or $HEADROOM_ZOMBIE_AFTER_S an existing automation keeps its window:
    the set-up of one more host must not change what every host's runs are judged by.
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(name=name)
    if within_s is None and existing and not os.environ.get(ENV_ZOMBIE_AFTER):
        within_s = existing[0].trigger.within.total_seconds()
    wanted = heartbeat_automation(within_s or default_within_s(), name)
    spec = wanted.model_dump(mode="json", exclude={"id", "owner_resource"})
    for duplicate in existing[1:]:  # left by a concurrent set-up: keep one
        with get_client(sync_client=True) as client:
            client.delete_automation(duplicate.id)
    if existing:
        current = existing[0].model_dump(mode="json", exclude={"id", "owner_resource"})
        if current != spec:
            wanted.id = existing[0].id
            wanted.update()
            log.info("updated automation %r", name)
        return existing[0].id
    created = wanted.create()
    log.info("created automation %r (%s)", name, created.id)
    return created.id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--within", type=float, help="seconds without a heartbeat (default 3x)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    automation_id = ensure_heartbeat_automation(args.within)
    log.info("automation %r: %s", AUTOMATION_NAME, automation_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
