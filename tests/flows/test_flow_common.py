"""What every workload's flow module does the same way: build its parameters from the call,
word a parameter error, publish an artifact, run as ``python -m flows.<workload>.flow``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect import flow

from flows import WORKLOADS
from flows.common.flow import main, parse_arguments, publish_artifact
from flows.common.params import DATA_ROOT_ENV, PROJECT_DIR, bad_parameter
from flows.fraud_synth.params import FraudSynthParams
from flows.oom_drill.params import OomDrillParams
from headroom.errors import BadInput


def test_from_call_takes_the_models_arguments_under_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    call = {"out": "data/fraud", "seed": 4, "max_workers": 3, "chunk_scale": 0.5}
    params = FraudSynthParams.from_call(call)
    assert (params.out, params.seed) == (str(tmp_path / "data" / "fraud"), 4)
    assert "max_workers" not in params.model_dump()  # headroom's, not the model's
    with pytest.raises(BadInput, match=r"^parameter parts: Input should be greater than"):
        OomDrillParams.from_call({"parts": 0, "rows": 10, "max_workers": 2})


def test_a_flows_parameter_error_reads_like_a_validation_error(tmp_path):
    with pytest.raises(BadInput) as parsed:
        OomDrillParams.parse(data_root=tmp_path, parts=0)
    raised = bad_parameter("parts", "why")
    assert isinstance(raised, BadInput)
    assert str(raised) == "parameter parts: why"
    assert str(parsed.value).split(": ", 1)[0] == str(raised).split(": ", 1)[0]


def test_arguments_are_json_where_they_parse_else_strings():
    arguments = parse_arguments(
        ["parts=3", "fraud_rate=0.5", "fetch=true", "customers=null", 'keys=["merchant"]',
         "start=2024-01-31", "size=200MB", "source=redis://h:1/0?stream=s"]
    )  # fmt: skip
    assert arguments == {
        "parts": 3,
        "fraud_rate": 0.5,
        "fetch": True,
        "customers": None,
        "keys": ["merchant"],
        "start": "2024-01-31",
        "size": "200MB",
        "source": "redis://h:1/0?stream=s",
    }
    for word in ("parts", "=3", "two words=1"):
        with pytest.raises(ValueError, match="expected NAME=VALUE"):
            parse_arguments([word])


def test_main_runs_the_flow_with_the_arguments_or_the_demo(tmp_path, capsys, prefect_harness):
    @flow(name="common-main-probe")
    def probe(rows: int = 1, label: str = "x") -> dict:
        return {"rows": rows * 2, "label": label}

    assert main(probe, lambda workdir: f"demo in {workdir}", ["rows=21", "label=b"]) == 0
    assert '"rows": 42' in capsys.readouterr().out
    assert main(probe, lambda workdir: f"demo in {workdir}", ["--demo", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"demo in {tmp_path}"
    assert main(probe, lambda workdir: "", ["rows"]) == 2
    assert "expected NAME=VALUE, got 'rows'" in capsys.readouterr().err


def test_a_flow_module_runs_as_a_script():
    env = {**os.environ, "HEADROOM_PREFECT_APP": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "flows.oom_drill.flow", "--help"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "usage: python -m flows.oom_drill.flow [NAME=VALUE ...]" in done.stdout


def _last_statement(module: str) -> str:
    path = PROJECT_DIR / Path(*module.split(".")).with_suffix(".py")
    return ast.unparse(ast.parse(path.read_text()).body[-1])


@pytest.mark.parametrize(
    "workload",
    WORKLOADS,
    ids=[w.name for w in WORKLOADS],
)
def test_every_flow_module_ends_in_the_same_main(workload):
    flow_name = workload.entrypoint.split(":")[1]
    assert _last_statement(workload.module) == f"run_if_main(__name__, {flow_name}, demo)"


def test_a_report_that_cannot_be_published_does_not_fail_the_run(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    @flow(name="common-artifact-probe")
    def publishes() -> tuple[bool, bool]:
        good = publish_artifact(
            "table", [{"a": 1}], key="common-artifact-probe", description="probe"
        )
        bad = publish_artifact("markdown", "# x", key="Not A Key!", description="probe")
        return good, bad

    state = publishes(return_state=True)
    assert state.is_completed()
    assert state.result() == (True, False)
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["common-artifact-probe"]))
        )
    assert [a.flow_run_id for a in found] == [state.state_details.flow_run_id]
