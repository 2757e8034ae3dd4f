"""train_fraud_model end to end on a temporary Prefect server: registry, model card artifact,
cached re-runs, a changed dataset, and a failed health check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterName,
)

from flows.fraud_synth.generate import generate_dataset_local
from flows.ml_pipeline import dataset as ml_dataset
from flows.ml_pipeline.flow import train_fraud_model
from headroom import BadInput

pytestmark = pytest.mark.usefixtures("prefect_harness")

MODEL = {"max_iter": 25, "seed": 5}
STEPS = ("build-fraud-features", "train-fraud-model", "evaluate-fraud-model")


def _dataset(root: Path, seed: int, transactions: int = 20_000) -> str:
    generate_dataset_local(
        root, transactions=transactions, seed=seed, start="2024-01-01", end="2024-02-29", files=3
    )
    return str(root)


def _task_states(flow_run_name: str) -> dict[str, str]:
    """Task name -> state name of one flow run, as the server recorded them."""
    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name]))
        )
        (flow_run,) = flow_runs
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in task_runs}


def test_trains_registers_and_a_rerun_reuses_every_step(tmp_path):
    dataset = _dataset(tmp_path / "data", seed=21)
    out = tmp_path / "registry"
    first = train_fraud_model.with_options(flow_run_name="ml-first")(
        dataset=dataset, out=str(out), **MODEL
    )
    metrics = first["metrics"]
    assert metrics["pr_auc"] >= 5 * metrics["fraud_rate"]
    assert first["features_rows"] == first["rows"] == 20_000
    assert all(state == "Completed" for state in first["steps"].values()), first["steps"]

    version_dir = out / "fraud-model" / first["version"]
    for name in ("model.pkl", "metrics.json", "features.json", "fingerprint.json", "MODEL_CARD.md"):
        assert (version_dir / name).is_file(), name
    assert (
        json.loads((out / "fraud-model" / "latest.json").read_text())["version"] == first["version"]
    )
    assert (
        json.loads((version_dir / "fingerprint.json").read_text())["fingerprint"]
        == first["fingerprint"]
    )
    card = (version_dir / "MODEL_CARD.md").read_text()
    for scenario in metrics["per_scenario"]:
        assert scenario in card

    with get_client(sync_client=True) as client:
        cards = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fraud-model-card"]))
        )
    assert any(first["version"] in (a.data or "") for a in cards)

    again = train_fraud_model.with_options(flow_run_name="ml-again")(
        dataset=dataset, out=str(out), **MODEL
    )
    assert again["metrics"] == metrics
    for step in (*STEPS, "register-fraud-model"):
        assert again["steps"][step] == "Cached", again["steps"]
    server_states = _task_states("ml-again")
    for step in STEPS:
        assert server_states[step] == "Cached", server_states
    assert server_states["check-fraud-dataset"] == "Completed"

    # A changed dataset (another seed, same place) runs every step again.
    shutil.rmtree(dataset)
    _dataset(Path(dataset), seed=22)
    changed = train_fraud_model.with_options(flow_run_name="ml-changed")(
        dataset=dataset, out=str(out), **MODEL
    )
    assert changed["fingerprint"] != first["fingerprint"]
    assert changed["version"] != first["version"]
    for step in (*STEPS, "register-fraud-model"):
        assert changed["steps"][step] == "Completed", changed["steps"]
    assert all(state == "Completed" for state in _task_states("ml-changed").values())


def test_a_failed_health_check_stops_the_run_naming_what_is_missing(tmp_path):
    dataset = Path(_dataset(tmp_path / "data", seed=23, transactions=12_000))
    manifest = ml_dataset.read_manifest(str(dataset))
    missing = ml_dataset.ordered_files(manifest)[1]["path"]
    (dataset / missing).unlink()
    with pytest.raises(BadInput) as failure:
        train_fraud_model.with_options(flow_run_name="ml-unhealthy")(
            dataset=str(dataset), out=str(tmp_path / "registry"), min_fraud_rows=1, **MODEL
        )
    assert missing in str(failure.value)
    assert "missing" in str(failure.value)
    states = _task_states("ml-unhealthy")
    assert states == {"check-fraud-dataset": "Failed"}
    assert not (tmp_path / "registry" / "fraud-model").exists()


def test_a_dataset_store_that_does_not_answer_names_host_and_parameter(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    state = train_fraud_model(
        dataset="s3://nowhere/fraud", out=str(tmp_path / "registry"), return_state=True
    )
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "parameter dataset: cannot reach s3://nowhere/fraud" in message, message
    assert "127.0.0.1:9" in message, message
    assert not (tmp_path / "registry" / "fraud-model").exists()
