"""What a user meets at `prefect deployment run`, against a real server with prefect.yaml
deployed by `prefect deploy --all`: every parameter is described in the stored schema, every
value the schema can express as wrong is refused before a flow run exists, and what it cannot
express fails the run at once with one BadInput line naming the parameter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deployments.production.throwaway import throwaway_server
from deployments.serve import ROOT, load_deployment_specs
from tests.conftest import require_service

PREFECT = str(Path(sys.executable).with_name("prefect"))
UUID_LINE = re.compile(r"UUID: ([0-9a-f-]{36})")
FLOW_OF = {
    "generate_fraud_dataset": "generate-fraud-dataset",
    "ingest_mitma_od": "ingest-mitma-od",
    "convert_iso_lmp": "convert-iso-lmp",
    "stream_stats": "stream-stats",
    "train_fraud_model": "train-fraud-model",
    "oom_drill": "oom-drill",
}
FULL_NAME = {
    spec["name"]: f"{FLOW_OF[spec['entrypoint'].rsplit(':', 1)[1]]}/{spec['name']}"
    for spec in load_deployment_specs()
}


@dataclass
class Deployed:
    """A throwaway server with every deployment of prefect.yaml, and the CLI's environment."""

    api_url: str
    env: dict[str, str]
    data_root: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PREFECT, "--no-prompt", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def post(self, path: str, body: dict) -> object:
        response = httpx.post(f"{self.api_url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def runs_tagged(self, tag: str) -> int:
        count = self.post("/flow_runs/count", {"flow_runs": {"tags": {"all_": [tag]}}})
        assert isinstance(count, int)
        return count

    def run(self, deployment: str, tag: str, **params: str) -> subprocess.CompletedProcess[str]:
        argv = ["deployment", "run", FULL_NAME[deployment], "--tag", tag]
        for key, value in params.items():
            argv += ["-p", f"{key}={value}"]
        return self.cli(*argv)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.setup import ensure_work_pool

    home = tmp_path_factory.mktemp("parameters")
    data_root = home / "data-root"
    data_root.mkdir()
    with throwaway_server(home / "server") as url:
        env = {
            **os.environ,
            "PREFECT_API_URL": url,
            "PREFECT_HOME": str(home / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "HEADROOM_DATA_ROOT": str(data_root),
            "HEADROOM_STATE_DIR": str(home / "state"),
        }
        env.pop("HEADROOM_ROOT", None)  # left for each run to resolve, as scripts/prod deploys
        with temporary_settings({PREFECT_API_URL: url}):
            ensure_work_pool()
        site = Deployed(url, env, data_root)
        deploy = site.cli("deploy", "--all")
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        site.env = {**env, "HEADROOM_ROOT": str(ROOT)}  # the pull step of executed runs
        yield site


def test_every_parameter_of_every_deployment_is_described(deployed):
    stored = deployed.post("/deployments/filter", {})
    assert isinstance(stored, list)
    assert {d["name"] for d in stored} == set(FULL_NAME)
    undescribed = [
        f"{d['name']}.{name}"
        for d in stored
        for name, schema in d["parameter_openapi_schema"]["properties"].items()
        if not (schema.get("description") or "").strip()
    ]
    assert not undescribed


WRONG = [
    ("fraud-synth-weekly", "size", "-1GB"),
    ("fraud-synth-weekly", "file_size", "lots"),
    ("fraud-synth-weekly", "fraud_rate", "7"),
    ("fraud-synth-weekly", "compression", "brotli"),
    ("fraud-synth-weekly", "max_workers", "0"),
    ("iso-lmp-daily-miso", "iso", "FOO"),
    ("iso-lmp-daily-miso", "markets", '["NOPE"]'),
    ("mitma-od-daily", "zone_type", "provincias"),
    ("mitma-od-daily", "lookback_days", "0"),
    ("stream-stats-redis", "backend", "tpu"),
    ("stream-stats-redis", "window", "five"),
    ("ml-fraud-model", "alert_rate", "0.9"),
    ("oom-drill", "parts", "0"),
]


def test_each_wrong_value_is_refused_and_creates_no_flow_run(deployed):
    tag = f"refused-{uuid.uuid4().hex[:8]}"
    for deployment, name, value in WRONG:
        result = deployed.run(deployment, tag, **{name: value})
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{deployment} accepted {name}={value}: {output[-500:]}"
        assert name in output, output[-1000:]
    assert deployed.runs_tagged(tag) == 0
    # The count sees runs of that tag: a right value makes one.
    accepted = deployed.run("oom-drill", tag, parts="3")
    assert accepted.returncode == 0, accepted.stdout[-2000:] + accepted.stderr[-2000:]
    assert deployed.runs_tagged(tag) == 1


def _execute(deployed: Deployed, deployment: str, **params: str) -> dict:
    """Create a run with the CLI, execute it in this checkout; the stored run and its logs."""
    created = deployed.run(deployment, f"bad-input-{uuid.uuid4().hex[:8]}", **params)
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]
    match = UUID_LINE.search(created.stdout)
    assert match, created.stdout
    run_id = match.group(1)
    deployed.cli("flow-run", "execute", run_id)
    run = httpx.get(f"{deployed.api_url}/flow_runs/{run_id}", timeout=30).json()
    logs = deployed.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}})
    assert isinstance(logs, list)
    run["log_text"] = "\n".join(entry["message"] for entry in logs)
    return run


def _assert_bad_input(run: dict, line: str) -> None:
    message = run["state"]["message"] or ""
    assert run["state"]["type"] == "FAILED", message
    assert f"BadInput: {line}" in message, message
    text = message + run["log_text"]
    assert "pydantic" not in text and "validation error" not in text, text[-2000:]


def test_end_before_start_fails_the_run_at_once_naming_the_parameter(deployed):
    out = deployed.data_root / "never-written"
    run = _execute(
        deployed, "fraud-synth-weekly", start="2024-03-01", end="2024-01-01", out=str(out)
    )
    _assert_bad_input(run, "parameter end: 2024-01-01 is before start 2024-03-01")
    assert not out.exists()


def test_a_relative_path_that_climbs_out_of_the_data_root_is_refused(deployed):
    run = _execute(deployed, "iso-lmp-daily-miso", out="../escaped")
    _assert_bad_input(run, "parameter out: '../escaped' climbs out of the data root")
    assert not (deployed.data_root.parent / "escaped").exists()


def test_a_raw_directory_that_does_not_exist_is_bad_input(deployed):
    run = _execute(deployed, "iso-lmp-daily-miso", raw="/does/not/exist", fetch="false")
    _assert_bad_input(run, "parameter raw: '/does/not/exist' is not an existing directory")
