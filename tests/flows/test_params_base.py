"""One definition of each workload's parameters: the flow signature follows the model, one
BadInput format for every workload, paths under one data root, and the README's Python API."""

from __future__ import annotations

import ast
import re
from datetime import date
from pathlib import Path

import pytest
from prefect.utilities.callables import parameter_schema

from flows.common.params import (
    DATA_ROOT_BLOCK,
    DATA_ROOT_ENV,
    PROJECT_DIR,
    FlowParams,
    data_root,
    signature_from,
)
from flows.fraud_synth.flow import generate_fraud_dataset
from flows.fraud_synth.params import FraudSynthParams
from flows.iso_lmp.flow import convert_iso_lmp
from flows.iso_lmp.params import IsoLmpParams
from flows.mitma_od.flow import ingest_mitma_od
from flows.mitma_od.params import MitmaParams
from flows.ml_pipeline.flow import train_fraud_model
from flows.ml_pipeline.params import TrainParams
from flows.oom_drill.flow import oom_drill
from flows.oom_drill.params import OomDrillParams
from flows.stream_stats.flow import stream_stats
from flows.stream_stats.params import StreamParams
from headroom.errors import BadInput

FLOWS = {
    "generate_fraud_dataset": (generate_fraud_dataset, FraudSynthParams),
    "ingest_mitma_od": (ingest_mitma_od, MitmaParams),
    "convert_iso_lmp": (convert_iso_lmp, IsoLmpParams),
    "stream_stats": (stream_stats, StreamParams),
    "train_fraud_model": (train_fraud_model, TrainParams),
    "oom_drill": (oom_drill, OomDrillParams),
}


@pytest.mark.parametrize("name", FLOWS)
def test_the_schema_carries_the_models_rules_and_descriptions(name):
    flow, model = FLOWS[name]
    properties = parameter_schema(flow).model_dump_for_openapi()["properties"]
    assert all(p.get("description") for p in properties.values()), properties
    for field_name, field in model.model_fields.items():
        if field_name in properties:
            assert properties[field_name]["description"] == field.description


def test_closed_sets_and_sizes_are_in_the_schema():
    fraud = parameter_schema(generate_fraud_dataset).model_dump_for_openapi()["properties"]
    assert fraud["compression"]["enum"] == ["zstd", "snappy", "lz4", "gzip", "none"]
    assert fraud["file_size"]["pattern"] and fraud["fraud_rate"]["maximum"] == 1
    iso = parameter_schema(convert_iso_lmp).model_dump_for_openapi()["properties"]["iso"]
    assert "MISO" in iso["anyOf"][0]["enum"] and "all" in iso["anyOf"][0]["enum"]
    zone = parameter_schema(ingest_mitma_od).model_dump_for_openapi()["properties"]["zone_type"]
    assert zone["enum"] == ["distritos", "municipios", "GAU"]


@pytest.mark.parametrize(
    ("model", "values", "line"),
    [
        (FraudSynthParams, {"start": "2024-03-01", "end": "2024-01-01"}, "parameter end: "),
        (MitmaParams, {"start_date": "2024-03-01", "end_date": "2024-01-01"}, "parameter end_date"),
        (
            IsoLmpParams,
            {"start": "2024-03-01", "end": "2024-01-01", "fetch": True},
            "parameter end",
        ),
        (StreamParams, {"source": "r://x", "sink": "s", "slide": "7s"}, "parameter window: "),
        (
            TrainParams,
            {"dataset": "s3://b/d", "train_end": "2024-02-01", "test_start": "2024-01-01"},
            "parameter test_start: ",
        ),
        (OomDrillParams, {"parts": 0}, "parameter parts: "),
    ],
)
def test_cross_field_rules_fail_as_one_bad_input_line(model, values, line, tmp_path):
    with pytest.raises(BadInput) as caught:
        model.parse(data_root=tmp_path, **values)
    message = str(caught.value)
    assert message.startswith(line), message
    assert "\n" not in message and "pydantic" not in message and "Value error" not in message


def test_relative_paths_resolve_under_the_data_root_and_may_not_climb_out(tmp_path):
    params = FraudSynthParams.parse(data_root=tmp_path, out="data/fraud")
    assert params.out == str(tmp_path / "data" / "fraud")
    assert FraudSynthParams.parse(data_root=tmp_path, out="a/../b").out == str(tmp_path / "b")
    assert FraudSynthParams.parse(data_root=tmp_path, out="/abs/x").out == "/abs/x"
    assert FraudSynthParams.parse(data_root=tmp_path, out="s3://b/p").out == "s3://b/p"
    assert FraudSynthParams.parse(data_root=tmp_path, out="a-block").out == "a-block"
    with pytest.raises(BadInput, match=r"^parameter out: '\.\./x' climbs out of the data root"):
        FraudSynthParams.parse(data_root=tmp_path, out="../x")
    with pytest.raises(BadInput, match="^parameter database: 'a/../../m.duckdb' climbs out"):
        MitmaParams.parse(data_root=tmp_path, database="a/../../m.duckdb")


def test_input_directories_must_exist(tmp_path):
    with pytest.raises(BadInput, match="^parameter raw: '/does/not/exist' is not an existing"):
        IsoLmpParams.parse(data_root=tmp_path, raw="/does/not/exist")
    with pytest.raises(BadInput, match="^parameter dataset: .*missing' is not an existing"):
        TrainParams.parse(data_root=tmp_path, dataset="missing")
    with pytest.raises(BadInput, match="^parameter source: .*nowhere' is not an existing"):
        StreamParams.parse(data_root=tmp_path, source="nowhere", sink="s.duckdb")
    with pytest.raises(BadInput, match="^parameter source: 'mirror' is neither a URL nor"):
        MitmaParams.parse(data_root=tmp_path, source="mirror")
    (tmp_path / "raw").mkdir()
    assert IsoLmpParams.parse(data_root=tmp_path, raw="raw").raw == str(tmp_path / "raw")
    # With fetch the raw directory is made by the download.
    assert IsoLmpParams.parse(data_root=tmp_path, raw="new", fetch=True).raw.endswith("new")


def test_a_run_without_raw_files_fails_saying_so(tmp_path, prefect_harness):
    (tmp_path / "raw").mkdir()
    with pytest.raises(BadInput, match="^parameter raw: no raw files of MISO for 2024-01-0"):
        convert_iso_lmp(
            iso="MISO", start=date(2024, 1, 1), end=date(2024, 1, 2), raw=str(tmp_path / "raw"),
            out=str(tmp_path / "out"),
        )  # fmt: skip


def test_the_data_root_is_the_environment_else_the_block_else_the_project(
    tmp_path, monkeypatch, prefect_harness
):
    from headroom.prefect.blocks import OutputStorage

    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert data_root() == PROJECT_DIR
    OutputStorage(path=str(tmp_path / "by-block")).save(DATA_ROOT_BLOCK, overwrite=True)
    try:
        assert data_root() == tmp_path / "by-block"
        monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "by-env"))
        assert data_root() == tmp_path / "by-env"
        assert FraudSynthParams.parse(out="d/x").out == str(tmp_path / "by-env" / "d" / "x")
    finally:
        OutputStorage.delete(DATA_ROOT_BLOCK)


def test_a_signature_that_disagrees_with_its_model_fails_at_import():
    class Params(FlowParams):
        rows: int = 5

    def other_default(rows: int = 6) -> None:
        """Doc."""

    with pytest.raises(TypeError, match="default of rows is 6, the model's 5"):
        signature_from(Params)(other_default)
    with pytest.raises(TypeError, match="parameter rows has no description"):
        signature_from(Params)(lambda rows=5: None)


def _readme_calls() -> list[tuple[str, dict]]:
    readme = (PROJECT_DIR / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "README's Python API section has no python block"
    calls = []
    for node in ast.walk(ast.parse(code.group(1))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in FLOWS:
                kwargs = {
                    k.arg: eval(compile(ast.Expression(k.value), "README", "eval"), {"date": date})
                    for k in node.keywords
                }
                calls.append((node.func.id, kwargs))
    return calls


def test_the_readme_calls_each_workload_with_parameters_its_flow_accepts(tmp_path):
    calls = _readme_calls()
    assert sorted(name for name, _ in calls) == sorted(FLOWS)
    for relative in ("data/fraud", "data/iso_lmp/raw"):
        (tmp_path / relative).mkdir(parents=True)
    for name, kwargs in calls:
        flow, model = FLOWS[name]
        flow.validate_parameters(kwargs)  # what Prefect checks before the run
        own = {k: v for k, v in kwargs.items() if k in model.model_fields}
        params = model.parse(data_root=tmp_path, **own)
        for key in ("out", "database", "sink", "raw", "dataset"):
            if key in own:
                assert Path(getattr(params, key)).is_relative_to(tmp_path), (name, key)
