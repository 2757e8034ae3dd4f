"""The ml-fraud-model deployment's trigger, as prefect.yaml declares it, starts a run on the real
server when a fraud-synth-weekly run completes, and only then."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter
from prefect.settings import PREFECT_API_URL

from deployments.serve import load_deployment_specs, to_runner_deployment

pytestmark = pytest.mark.usefixtures("prefect_harness")

SPECS = {spec["name"]: spec for spec in load_deployment_specs()}


def _completed_event(deployment_name: str) -> dict:
    """A prefect.flow-run.Completed event shaped as Prefect's engine emits it."""
    return {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": "prefect.flow-run.Completed",
        "resource": {
            "prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}",
            "prefect.resource.name": "brisk-otter",
            "prefect.state-name": "Completed",
            "prefect.state-type": "COMPLETED",
        },
        "related": [
            {
                "prefect.resource.id": f"prefect.deployment.{uuid.uuid4()}",
                "prefect.resource.role": "deployment",
                "prefect.resource.name": deployment_name,
            },
            {
                "prefect.resource.id": f"prefect.flow.{uuid.uuid4()}",
                "prefect.resource.role": "flow",
                "prefect.resource.name": "generate-fraud-dataset",
            },
        ],
        "payload": {},
    }


def test_every_declared_trigger_names_a_deployment_of_this_project():
    for spec in SPECS.values():
        for trigger in spec.get("triggers") or []:
            related = trigger.get("match_related") or {}
            if related.get("prefect.resource.role") == "deployment":
                assert related["prefect.resource.name"] in SPECS, spec["name"]


def test_a_completed_fraud_synth_run_triggers_the_model_deployment():
    spec = SPECS["ml-fraud-model"]
    # Without its nightly schedule, whose runs the scheduler would add to the count.
    deployment_id = to_runner_deployment({**spec, "schedules": []}).apply()
    try:
        url = PREFECT_API_URL.value()
        # Another deployment completing must not start a training run; sent first, so that
        # by the time the matching event has fired, this one has been evaluated too.
        for name in ("mitma-od-daily", "fraud-synth-weekly"):
            httpx.post(f"{url}/events", json=[_completed_event(name)]).raise_for_status()
        runs = []
        deadline = time.monotonic() + 60
        with get_client(sync_client=True) as client:
            while not runs and time.monotonic() < deadline:
                time.sleep(1)
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id={"any_": [deployment_id]})
                )
            time.sleep(3)  # a second (wrong) run would show up by now
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id={"any_": [deployment_id]})
            )
        assert len(runs) == 1, f"expected one triggered run, got {len(runs)}"
        assert runs[0].parameters == spec["triggers"][0]["parameters"]
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)
