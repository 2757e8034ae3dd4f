"""Every deployment's pull step, run by Prefect's own step runner as a worker's flow-run process
runs it: from HEADROOM_ROOT when set, and an error naming the variable when it is not."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import yaml
from prefect.deployments.steps.core import StepExecutionError, run_steps

ROOT = Path(__file__).resolve().parents[2]


def _pull_steps() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Start where a worker starts a flow-run process: a temporary directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_pull_step_runs_from_headroom_root(elsewhere, monkeypatch):
    monkeypatch.setenv("HEADROOM_ROOT", str(ROOT))
    output = asyncio.run(run_steps(_pull_steps()))
    assert Path.cwd() == ROOT
    assert output["directory"] == str(ROOT)


@pytest.mark.parametrize("value", [None, "", "/nonexistent/headroom"])
def test_a_worker_without_headroom_root_is_told_what_to_set(elsewhere, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("HEADROOM_ROOT", raising=False)
    else:
        monkeypatch.setenv("HEADROOM_ROOT", value)
    with pytest.raises(StepExecutionError) as raised:
        asyncio.run(run_steps(_pull_steps()))
    message = str(raised.value.__cause__ or raised.value)
    assert "HEADROOM_ROOT" in message and "checkout" in message, message
    assert Path.cwd() == elsewhere  # nothing ran from the wrong directory
    assert os.environ.get("HEADROOM_ROOT", "") == (value or "")
