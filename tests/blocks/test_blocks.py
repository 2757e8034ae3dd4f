"""Blocks: registered by setup, saved, loaded by name in a fresh process, used by flows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from headroom import BadInput
from headroom.prefect.blocks import (
    MemoryBudget,
    OutputStorage,
    forget_cached_block,
    register_blocks,
    resolve_out,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_storage_block_loads_by_name_in_a_fresh_process(tmp_path):
    register_blocks()
    OutputStorage(
        endpoint_url="http://127.0.0.1:9",
        bucket="lake",
        prefix="fraud/v1",
        access_key_id=SecretStr("AKIDEXAMPLE"),
        secret_access_key=SecretStr("not-a-real-secret"),
    ).save("lake-test", overwrite=True)
    code = (
        "import json; from headroom.prefect.blocks import OutputStorage;"
        "b = OutputStorage.load('lake-test');"
        "print(json.dumps({'url': b.url(), 'key': b.s3_settings().access_key}))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    loaded = json.loads(output.strip().splitlines()[-1])
    assert loaded == {"url": "s3://lake/fraud/v1", "key": "AKIDEXAMPLE"}


def test_resolve_out_takes_a_path_a_url_or_a_block_name(tmp_path):
    OutputStorage(path=str(tmp_path / "by-block")).save("local-out", overwrite=True)
    assert resolve_out("local-out").root == str(tmp_path / "by-block")
    assert resolve_out(str(tmp_path / "direct")).root == str(tmp_path / "direct")
    with pytest.raises(BadInput, match="no-such-block"):
        resolve_out("no-such-block")


def test_budget_block_is_used_unless_the_environment_overrides(monkeypatch):
    from headroom.prefect import current_budget

    MemoryBudget(limit="1500MB").save("default", overwrite=True)
    monkeypatch.delenv("HEADROOM_MEMORY_LIMIT")
    forget_cached_block()
    try:
        assert current_budget().bytes == 1_500_000_000
        monkeypatch.setenv("HEADROOM_MEMORY_LIMIT", "2GiB")
        assert current_budget().bytes == 2 << 30
    finally:
        MemoryBudget.delete("default")
        forget_cached_block()


def test_budget_block_refuses_a_bad_size():
    with pytest.raises(ValueError, match="limit"):
        MemoryBudget(limit="lots")


def test_budget_block_caps_override_the_declared_cap_of_a_tag():
    from prefect import flow

    from headroom import current_cap_mb
    from headroom.prefect import budgeted_task

    report_cap = budgeted_task(current_cap_mb, tag="mitma-od", name="report-cap")

    @flow
    def cap_of_a_mitma_task() -> float:
        return report_cap()

    assert cap_of_a_mitma_task() == 300  # deployments/limits.toml
    MemoryBudget(tag_caps={"mitma-od": "123MiB"}).save("default", overwrite=True)
    forget_cached_block()
    try:
        assert cap_of_a_mitma_task() == 123  # the guarded child really ran under the block's cap
    finally:
        MemoryBudget.delete("default")
        forget_cached_block()


def test_budget_block_refuses_a_bad_tag_cap():
    with pytest.raises(ValueError, match="mitma-od"):
        MemoryBudget(tag_caps={"mitma-od": "plenty"})


def test_saved_blocks_still_load_after_the_move_into_headroom():
    # Blocks saved before the classes moved from blocks/ into headroom/prefect/blocks.py are found
    # by these slugs and hold data of these schemas (checksums of the classes as they were).
    assert MemoryBudget.get_block_type_slug() == "headroom-memory-budget"
    assert OutputStorage.get_block_type_slug() == "headroom-output-storage"
    assert MemoryBudget._calculate_schema_checksum() == (
        "sha256:5efc7543f1389ae816c073bdfe4dd11bb3ecbc534687fd91e3cbf35592e127bd"
    )
    assert OutputStorage._calculate_schema_checksum() == (
        "sha256:3f566c6c8c1d2b11e90544c3104e9e316e592a6df7b6d9ba1385f0e4d4cbf9e9"
    )
