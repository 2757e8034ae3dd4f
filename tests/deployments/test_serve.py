"""``python -m deployments.serve`` gives the deployments ``prefect deploy`` gives, field by
field, and ``prefect deployment run --watch`` against it returns when the run ends."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from deployments.production.server import ServerSettings, deploy
from deployments.serve import load_deployment_specs
from tests.deployments.conftest import SERVED

PREFECT = str(Path(sys.executable).with_name("prefect"))
# What a deployment is, as the API stores it; ids, timestamps and server-made fields left out.
FIELDS = [
    "name",
    "description",
    "entrypoint",
    "path",
    "parameters",
    "parameter_openapi_schema",
    "enforce_parameter_schema",
    "tags",
    "work_pool_name",
    "work_queue_name",
    "job_variables",
    "pull_steps",
    "paused",
    "concurrency_limit",
]


def _deployments(api_url: str) -> dict[str, dict[str, Any]]:
    records = httpx.post(f"{api_url}/deployments/filter", json={}).raise_for_status().json()
    automations = httpx.post(f"{api_url}/automations/filter", json={}).raise_for_status().json()
    shaped = {}
    for record in records:
        shape = {field: record.get(field) for field in FIELDS}
        limit = record.get("global_concurrency_limit") or {}
        shape["concurrency"] = (limit.get("limit"), (record.get("concurrency_options") or {}))
        shape["schedules"] = sorted(
            (s["schedule"].get("cron"), s["schedule"].get("timezone"), s["active"])
            for s in record["schedules"]
        )
        shape["triggers"] = [
            _without_ids(a["trigger"]) | {"actions": [_without_ids(x) for x in a["actions"]]}
            for a in automations
            if any(x.get("deployment_id") == record["id"] for x in a["actions"])
        ]
        shaped[record["name"]] = shape
    return shaped


def _without_ids(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k not in ("id", "deployment_id")}


def test_serve_and_prefect_deploy_give_equal_deployments(served, prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from deployments.setup import ensure_work_pool

    api_url = PREFECT_API_URL.value()
    ensure_work_pool()
    port = urlparse(api_url).port
    assert port is not None
    deploy(ServerSettings(port=port, state_dir=tmp_path), SERVED, output=tmp_path / "deploy.log")
    by_serve, by_deploy = _deployments(served.api_url), _deployments(api_url)
    assert set(SERVED) <= set(by_serve) and set(SERVED) <= set(by_deploy)
    for name in SERVED:
        for field, value in by_serve[name].items():
            assert value == by_deploy[name][field], (name, field)

    # And they are what prefect.yaml says: the fields the old serve dropped are there.
    specs = {s["name"]: s for s in load_deployment_specs()}
    for name in ("stream-stats-redis", "ml-fraud-model"):
        assert specs[name]["concurrency_limit"] == 1
        assert by_serve[name]["concurrency"][0] == 1, name
    assert by_serve["oom-drill"]["schedules"] == [("17 * * * *", "UTC", False)]
    (trigger,) = by_serve["ml-fraud-model"]["triggers"]
    assert trigger["match_related"]["prefect.resource.name"] == "fraud-synth-weekly"
    assert by_serve["oom-drill"]["description"] == specs["oom-drill"]["description"]
    assert "HTTP Request" not in served.output.read_text()  # setup and serve: no request lines


def test_watch_returns_when_the_run_ends(served):
    argv = [PREFECT, "deployment", "run", "oom-drill/oom-drill", "--watch"]
    # A watch that misses the run's end runs into --watch-timeout and exits with an error; the
    # timeout is well above what the run takes (about 10 s from creation to Completed).
    argv += ["--param", "parts=1", "--param", "rows=100000", "--watch-timeout", "120"]
    done = subprocess.run(
        argv, env=served.client_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Flow run finished successfully in 'Completed'" in done.stdout, done.stdout
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout)
    assert flow_run_id, done.stdout
    run = httpx.get(f"{served.api_url}/flow_runs/{flow_run_id[1]}").raise_for_status().json()
    assert run["state"]["type"] == "COMPLETED"
    # The run's page link names the served UI, not "<no dashboard available>".
    assert served.api_url.removesuffix("/api") in done.stdout


def test_serve_defaults_to_the_ui_on_loopback_4200_with_the_project_home(monkeypatch):
    from deployments.serve import ROOT, serve_settings

    monkeypatch.delenv("HEADROOM_SERVER_PORT", raising=False)
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    settings = serve_settings()
    assert (settings.host, settings.port, settings.ui) == ("127.0.0.1", 4200, True)
    assert settings.prefect_home == ROOT / ".prefect"
    assert settings.server_env(None)["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith(
        "sqlite+aiosqlite:///"
    )


def test_serve_says_where_the_ui_is(served):
    ui = served.api_url.removesuffix("/api")
    text = served.output.read_text()
    assert f"serving: UI {ui} " in text
    assert httpx.get(ui).status_code == 200  # the UI itself answers there
    assert f"export PREFECT_API_URL={served.api_url}" in text
