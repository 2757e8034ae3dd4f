"""The zombie-run automations: a flow run whose heartbeats stop is marked Crashed, and a run
so crashed is run again, once.

    python -m deployments.production.automations [--within SECONDS]   # idempotent

A worker (or ``serve()``) marks a flow run Crashed when its flow-run process dies, and the
flow's on_crashed hook re-runs it there. When the whole host is lost (worker and flow-run
process both gone) nothing is left to do that: the run would stay Running for ever. Flow runs
emit ``prefect.flow-run.heartbeat`` every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (at least
30); the first automation fires when a run that sent one sends neither another heartbeat nor a
final state within ``within`` seconds, and marks it Crashed. It does nothing else: the final
state event of a run can reach the server before its last heartbeat, and then the trigger
fires for a run that has finished. The server refuses Crashed for a run already in a final
state, so such a run emits no event, and only the second automation re-runs anything: it
reacts to the Crashed event of a state change made by the first (its message), once per
event, with the parameters of headroom.prefect.reruns (chunk_scale halved, lineage capped).
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

AUTOMATION_NAME = "headroom: crash flow runs without heartbeats"
RERUN_AUTOMATION_NAME = "headroom: re-run flow runs crashed for a lost host"
# The Crashed message the first automation sets and the second one matches.
NO_HEARTBEAT = "No heartbeat for {within:g} s: its host was lost (headroom)."
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


def default_within_s() -> float:
    """$HEADROOM_ZOMBIE_AFTER_S, else three of the heartbeat periods the work pool pins."""
    if os.environ.get(ENV_ZOMBIE_AFTER):
        return float(os.environ[ENV_ZOMBIE_AFTER])
    from deployments.setup import FLOW_HEARTBEAT_S

    return 3.0 * FLOW_HEARTBEAT_S


def heartbeat_automation(within_s: float, name: str = AUTOMATION_NAME) -> Any:
    """The automation, not yet created: no heartbeat for ``within_s`` s -> Crashed."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
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
            f"Flow runs that send no heartbeat for {within_s:g} s are marked Crashed (worker and "
            "flow-run process lost together); a run already final stays as it is."
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
                state=StateType.CRASHED, message=NO_HEARTBEAT.format(within=within_s)
            )
        ],
    )


def rerun_automation(name: str = RERUN_AUTOMATION_NAME) -> Any:
    """The automation, not yet created: a run Crashed by the heartbeat automation -> one re-run
    of its deployment (headroom.prefect.reruns: chunk_scale halved, lineage capped)."""
    from prefect.automations import Automation
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    from headroom.prefect.reruns import RERUN_PARAMETERS

    prefix = NO_HEARTBEAT.split("{", 1)[0]
    return Automation(
        name=name,
        description="A flow run Crashed for want of heartbeats is run again, once.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match=ResourceSpecification(
                {"prefect.resource.id": "prefect.flow-run.*", "prefect.state-message": f"{prefix}*"}
            ),
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        # The deployment is inferred from the event's related resources; the parameters are
        # rendered by the server from the lost flow run.
        actions=[RunDeployment(source="inferred", parameters=RERUN_PARAMETERS)],
    )


def ensure_automations(within_s: float | None = None, name: str = AUTOMATION_NAME) -> UUID:
    """Create both automations, or bring the existing ones (by name) up to date; returns the
    heartbeat automation's id.

    Without ``within_s`` or $HEADROOM_ZOMBIE_AFTER_S an existing automation keeps its window:
    the set-up of one more host must not change what every host's runs are judged by.
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(name=name)
    if within_s is None and existing and not os.environ.get(ENV_ZOMBIE_AFTER):
        within_s = existing[0].trigger.within.total_seconds()
    _ensure(rerun_automation())
    return _ensure(heartbeat_automation(within_s or default_within_s(), name))


def _ensure(wanted: Any) -> UUID:
    """Create ``wanted``, or update the automation of its name to it; one of each name."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(name=wanted.name)
        for duplicate in existing[1:]:  # left by a concurrent set-up: keep one
            client.delete_automation(duplicate.id)
    spec = wanted.model_dump(mode="json", exclude={"id", "owner_resource"})
    if existing:
        current = existing[0].model_dump(mode="json", exclude={"id", "owner_resource"})
        if current != spec:
            wanted.id = existing[0].id
            wanted.update()
            log.info("updated automation %r", wanted.name)
        return existing[0].id
    created = wanted.create()
    log.info("created automation %r (%s)", wanted.name, created.id)
    return created.id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--within", type=float, help="seconds without a heartbeat (default 3x)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    automation_id = ensure_automations(args.within)
    log.info("automations %r (%s) and %r", AUTOMATION_NAME, automation_id, RERUN_AUTOMATION_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
