"""Serve every deployment in prefect.yaml from one process: the zero-setup path.

    python -m deployments.serve [--only NAME ...]

Runs setup first (limits, blocks), then serves each deployment with its parameters, schedules
and tags. A served flow-run process killed by SIGKILL is marked Crashed by this runner, which
then calls the flows' on_crashed hook (a re-run with chunk_scale halved).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "prefect.yaml"


def load_deployment_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The deployments of prefect.yaml, YAML anchors resolved."""
    document = yaml.safe_load(path.read_text())
    return list(document.get("deployments") or [])


def to_runner_deployment(spec: dict[str, Any]) -> Any:
    """A deployment of prefect.yaml as a RunnerDeployment that ``serve`` can run."""
    from prefect.client.schemas.schedules import construct_schedule
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(ROOT / spec["entrypoint"]))
    schedules = [
        construct_schedule(cron=s["cron"], timezone=s.get("timezone"))
        for s in spec.get("schedules") or []
        if s.get("cron") and s.get("active", True)
    ]
    return flow.to_deployment(
        name=spec["name"],
        parameters=spec.get("parameters") or {},
        schedules=schedules or None,
        triggers=deployment_triggers(spec) or None,
        tags=spec.get("tags") or [],
        description=spec.get("description"),
    )


def deployment_triggers(spec: dict[str, Any]) -> list[Any]:
    """The ``triggers`` of a prefect.yaml deployment, validated as ``prefect deploy`` does."""
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(DeploymentTriggerTypes)
    return [adapter.validate_python(trigger) for trigger in spec.get("triggers") or []]


def main(argv: list[str] | None = None) -> None:
    from prefect import serve

    from deployments.setup import FLOW_HEARTBEAT_S, HEARTBEAT_VARIABLE, setup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="serve only these deployment names")
    parser.add_argument("--no-setup", action="store_true", help="skip limits/blocks set-up")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.no_setup:
        setup()
    # Served runs heartbeat as a worker's do (the pool pins it): the zombie-run automation
    # would otherwise judge Prefect's default 180 s period by a window made for 30 s.
    os.environ[HEARTBEAT_VARIABLE] = str(FLOW_HEARTBEAT_S)
    specs = [s for s in load_deployment_specs() if not args.only or s["name"] in args.only]
    serve(*(to_runner_deployment(spec) for spec in specs))


if __name__ == "__main__":
    main()
