"""The fraud-model pipeline's pure steps on a small generated fraud_synth dataset (no Prefect):
health check, fingerprint, features (checked against pandas), train, evaluate, register."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from flows.fraud_synth.generate import generate_dataset_local
from flows.ml_pipeline import dataset as ml_dataset
from flows.ml_pipeline import features as ml_features
from flows.ml_pipeline import model as ml_model
from flows.ml_pipeline import params as ml_params
from flows.ml_pipeline import registry as ml_registry
from flows.ml_pipeline import schema
from headroom import BadInput

CAP_MB = 1024.0
MODEL = {
    "learning_rate": 0.05,
    "max_iter": 25,
    "max_leaf_nodes": 31,
    "min_samples_leaf": 5,
    "l2_regularization": 0.0,
}
# The model must rank fraud far above chance: PR-AUC at least this many times the fraud rate
# (a trivial model that scores every row alike has PR-AUC = the fraud rate).
LIFT = 5.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("fraud-data")
    generate_dataset_local(
        root, transactions=30_000, seed=11, start="2024-01-01", end="2024-02-29", files=4
    )
    return str(root)


@pytest.fixture(scope="module")
def health(dataset) -> dict:
    return ml_dataset.check_dataset(dataset, min_fraud_rows=50)


@pytest.fixture(scope="module")
def features(dataset, tmp_path_factory) -> dict:
    # A batch smaller than a file: every file is its own batch, with look-back across files.
    out = tmp_path_factory.mktemp("features") / "features"
    return ml_features.build_features(dataset, str(out), rows_per_batch=1, cap_mb=CAP_MB)


@pytest.fixture(scope="module")
def split(health) -> tuple[int, int]:
    return ml_params.resolve_split(
        ml_params.TrainParams(dataset="x"), health["min_ts_ms"], health["max_ts_ms"]
    )


@pytest.fixture(scope="module")
def trained(features, split, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("model")
    training = ml_model.train_model(
        features["features_dir"], str(work / "model.pkl"), split[0], MODEL, 3, 1_000_000, CAP_MB
    )
    metrics = ml_model.evaluate_model(
        features["features_dir"],
        training["model_path"],
        split[1],
        str(work / "metrics.json"),
        0.01,
        4_000,
        CAP_MB,
    )
    return {"training": training, "metrics": metrics, "work": work}


def _transactions(dataset: str) -> pd.DataFrame:
    manifest = ml_dataset.read_manifest(dataset)
    tables = [pq.read_table(Path(dataset, f["path"])) for f in ml_dataset.ordered_files(manifest)]
    frame = pa.concat_tables(tables).to_pandas()
    frame["fraud_scenario"] = frame["fraud_scenario"].astype(str)
    frame["t"] = frame["ts"].dt.as_unit("ms").astype("int64")
    return frame


def test_health_report_matches_the_generated_data(dataset, health):
    frame = _transactions(dataset)
    assert health["rows"] == len(frame)
    assert health["fraud_rows"] == int(frame["is_fraud"].sum())
    truth = frame[frame.is_fraud].groupby("fraud_scenario").size().to_dict()
    assert health["fraud_by_scenario"] == truth
    assert health["min_ts_ms"] == frame["ts"].min().value // 10**6


def test_fingerprint_follows_content_not_location(dataset, health, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    assert ml_dataset.check_dataset(str(copy))["fingerprint"] == health["fingerprint"]
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][2]["checksum"] = "sha256:" + "0" * 64
    assert ml_dataset.dataset_fingerprint(manifest) != health["fingerprint"]


def test_health_check_names_a_missing_file_a_missing_column_and_scarce_fraud(dataset, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    files = ml_dataset.ordered_files(ml_dataset.read_manifest(str(broken)))
    (broken / files[0]["path"]).unlink()
    # Another file loses a column; its manifest entry is updated so only the schema is wrong.
    table = pq.read_table(broken / files[2]["path"]).drop_columns(["device_id"])
    pq.write_table(table, broken / files[2]["path"])
    manifest = json.loads((broken / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == files[2]["path"]:
            entry["bytes"] = (broken / files[2]["path"]).stat().st_size
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInput) as failure:
        ml_dataset.check_dataset(str(broken), min_fraud_rows=10**6)
    message = str(failure.value)
    assert f"{files[0]['path']}: listed in manifest.json but missing" in message
    assert f"{files[2]['path']}: column 'device_id' is missing" in message
    assert "min_fraud_rows=1000000" in message
    assert files[1]["path"] not in message

    (broken / "manifest.json").unlink()
    with pytest.raises(BadInput, match="manifest.json is missing"):
        ml_dataset.check_dataset(str(broken))
    with pytest.raises(BadInput, match="is not a directory"):
        ml_dataset.check_dataset(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("path", ["../outside.parquet", "/etc/passwd", "a/../../b.parquet"])
def test_a_manifest_path_that_leaves_the_dataset_is_refused(dataset, tmp_path, path):
    # A staged copy of a remote dataset is written at these paths: none may escape its root.
    forged = tmp_path / "forged"
    shutil.copytree(dataset, forged)
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest["files"][1]["path"] = path
    (forged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInput, match="is not a path inside"):
        ml_dataset.check_dataset(str(forged))


def test_features_match_a_pandas_computation_and_do_not_depend_on_batching(
    dataset, features, tmp_path
):
    assert features["rows"] == 30_000 and features["parts"] == 4
    ours = pd.read_parquet(features["features_dir"]).sort_values("transaction_id")
    ours = ours.set_index("transaction_id")
    whole = ml_features.build_features(dataset, str(tmp_path / "one"), 10**9, CAP_MB)
    assert whole["parts"] == 1
    one = pd.read_parquet(whole["features_dir"]).sort_values("transaction_id")
    pd.testing.assert_frame_equal(
        ours[list(schema.FEATURES)], one.set_index("transaction_id")[list(schema.FEATURES)]
    )

    frame = _transactions(dataset).sort_values(["ts", "transaction_id"])
    frame = frame.set_index("transaction_id")
    by_customer = frame.groupby("customer_id")
    gap = by_customer["t"].diff()
    expected = {
        "cust_tx_24h": by_customer["t"].transform(
            lambda t: pd.Series(
                np.searchsorted(t.values, t.values, side="right")
                - np.searchsorted(t.values, t.values - schema.DAY_MS, side="left"),
                index=t.index,
            )
        ),
        "secs_since_cust_prev": gap.fillna(schema.LOOKBACK_MS).clip(upper=schema.LOOKBACK_MS)
        / 1000,
        "new_device": (
            (frame.groupby(["customer_id", "device_id"])["t"].transform("min") == frame["t"])
            & (by_customer["t"].transform("min") < frame["t"])
        ).astype(int),
        "is_night": ((frame["t"] // schema.HOUR_MS) % 24 < 6).astype(int),
    }
    for name, values in expected.items():
        np.testing.assert_allclose(
            ours.loc[frame.index, name].to_numpy(dtype=float),
            values.to_numpy(dtype=float),
            err_msg=name,
        )


def test_model_beats_a_trivial_baseline_on_every_scenario(dataset, trained, split):
    metrics = trained["metrics"]
    assert metrics["pr_auc"] >= LIFT * metrics["fraud_rate"]
    assert metrics["roc_auc"] > 0.8
    frame = _transactions(dataset)
    test = frame[frame["t"] >= split[1]]
    assert metrics["rows"] == len(test)
    # The trivial baseline's PR-AUC is the test period's fraud share, counted from the data.
    assert metrics["baseline_pr_auc"] == pytest.approx(test["is_fraud"].mean(), abs=1e-6)
    truth = test[test.is_fraud].groupby("fraud_scenario").size().to_dict()
    assert {k: v["rows"] for k, v in metrics["per_scenario"].items()} == truth
    for scenario, values in metrics["per_scenario"].items():
        assert values["roc_auc"] > 0.5, scenario
    assert metrics["alerts"] == int(np.ceil(0.01 * len(test)))
    assert json.loads((trained["work"] / "metrics.json").read_text()) == metrics


def test_the_same_seed_gives_the_same_metrics(features, trained, split, tmp_path):
    again = ml_model.train_model(
        features["features_dir"],
        str(tmp_path / "model.pkl"),
        split[0],
        MODEL,
        3,
        1_000_000,
        CAP_MB,
    )
    metrics = ml_model.evaluate_model(
        features["features_dir"],
        again["model_path"],
        split[1],
        str(tmp_path / "m.json"),
        0.01,
        50_000,
        CAP_MB,
    )
    drop = {"seconds"}
    assert {k: v for k, v in metrics.items() if k not in drop} == {
        k: v for k, v in trained["metrics"].items() if k not in drop
    }
    assert (tmp_path / "model.pkl").read_bytes() == Path(
        trained["training"]["model_path"]
    ).read_bytes()


def test_a_sample_smaller_than_the_data_keeps_every_fraud_row(features, split, tmp_path):
    training = ml_model.train_model(
        features["features_dir"],
        str(tmp_path / "model.pkl"),
        split[0],
        {**MODEL, "max_iter": 2},
        3,
        4_000,
        CAP_MB,
    )
    assert training["sampled_fraud"] == training["train_fraud"]
    assert training["sampled_rows"] < training["train_rows"]
    assert abs(training["sampled_rows"] - 4_000) < 600


def test_register_publishes_a_complete_version(trained, health, split, tmp_path):
    out = tmp_path / "registry"
    splits = {"train_end": schema.iso(split[0]), "test_start": schema.iso(split[1])}
    version = ml_registry.model_version(health["fingerprint"], MODEL, splits, 3)
    result = ml_registry.register_model(
        str(out),
        version,
        trained["training"]["model_path"],
        trained["metrics"],
        trained["training"],
        health,
        MODEL,
        splits,
    )
    folder = out / "fraud-model" / version
    registration = json.loads((folder / "registration.json").read_text())
    for name in registration["files"]:
        assert (folder / name).is_file(), name
    assert json.loads((folder / "features.json").read_text())["features"] == list(schema.FEATURES)
    assert json.loads((out / "fraud-model" / "latest.json").read_text())["version"] == version
    assert trained["metrics"]["per_scenario"]
    for scenario in trained["metrics"]["per_scenario"]:
        assert f"| {scenario} |" in result["card"], scenario
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]


def test_parameters_fail_before_any_work(health):
    with pytest.raises(ValidationError, match="test_start"):
        ml_params.TrainParams(dataset="d", train_end="2024-02-01", test_start="2024-01-15")
    with pytest.raises(ValidationError, match="train_fraction"):
        ml_params.TrainParams(dataset="d", train_fraction=1.5)
    params = ml_params.TrainParams(dataset="d", train_end="1999-01-01")
    with pytest.raises(BadInput, match="^parameter train_end: 1999-01-01"):
        ml_params.resolve_split(params, health["min_ts_ms"], health["max_ts_ms"])


def test_duckdb_settings_follow_the_cap():
    small, big = (
        ml_features.duckdb_settings(300, "/tmp/x"),
        ml_features.duckdb_settings(4096, "/tmp/x"),
    )
    assert small["memory_limit"] == "150MiB" and small["threads"] == 1
    # 2048 MiB of DuckDB memory: 10 threads of 200 MiB, as many as there are cores.
    assert big["memory_limit"] == "2048MiB" and big["threads"] == min(os.cpu_count() or 1, 10)
    batches = ml_features.file_batches([{"rows": 10}, {"rows": 10}, {"rows": 25}, {"rows": 1}], 20)
    assert [len(b) for b in batches] == [2, 1, 1]
