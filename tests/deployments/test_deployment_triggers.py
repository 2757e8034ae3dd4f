"""The ml-fraud-model deployment's trigger, as prefect.yaml declares it: a completed
fraud-synth-weekly run starts a training run on the dataset that very run wrote."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from deployments.serve import load_deployment_specs

PREFECT = str(Path(sys.executable).with_name("prefect"))
SPECS = {spec["name"]: spec for spec in load_deployment_specs()}


def test_every_declared_trigger_names_a_deployment_of_this_project():
    triggers = [t for spec in SPECS.values() for t in spec.get("triggers") or []]
    assert triggers, "prefect.yaml declares no trigger"
    for trigger in triggers:
        related = trigger["match_related"]
        assert related["prefect.resource.role"] == "deployment"
        assert related["prefect.resource.name"] in SPECS


def _deployment_id(api_url: str, name: str) -> str:
    body = {"deployments": {"name": {"any_": [name]}}}
    (record,) = httpx.post(f"{api_url}/deployments/filter", json=body).raise_for_status().json()
    return record["id"]


def _ml_runs(api_url: str) -> list[dict]:
    body = {"deployments": {"id": {"any_": [_deployment_id(api_url, "ml-fraud-model")]}}}
    return httpx.post(f"{api_url}/flow_runs/filter", json=body).raise_for_status().json()


def test_the_triggered_training_run_gets_the_fraud_runs_out_as_dataset(served, tmp_path):
    out = str(tmp_path / "fraud-small")
    before = {run["id"] for run in _ml_runs(served.api_url)}
    fraud = _deployment_id(served.api_url, "fraud-synth-weekly")
    argv = [PREFECT, "deployment", "run", "--id", fraud, "--watch"]
    for param in ("size=2MB", "file_size=1MB", f"out={out}", "end=2024-01-07"):
        argv += ["--param", param]
    done = subprocess.run(
        argv + ["--watch-timeout", "240"],
        env=served.client_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr  # the fraud run completed
    assert any(Path(out).rglob("*.parquet")), "the fraud run wrote no dataset"
    new: list[dict] = []
    deadline = time.monotonic() + 60
    while not new and time.monotonic() < deadline:
        time.sleep(1)
        # the nightly schedule's future runs may be created meanwhile: only the trigger's count
        new = [
            r for r in _ml_runs(served.api_url) if r["id"] not in before and not r["auto_scheduled"]
        ]
    assert len(new) == 1, new
    assert new[0]["parameters"]["dataset"] == out
    assert new[0]["parameters"]["out"] == SPECS["ml-fraud-model"]["parameters"]["out"]
