"""Paths that look like SQL are data, never SQL: every DuckDB statement that takes a path
(spill directory, COPY target, read_parquet list) gets it as a bind parameter.

Each directory name below would, pasted into a quoted SQL string, end the string and run a
COPY that writes ``injected.csv`` into the working directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flows.fraud_synth.generate import generate_dataset_local
from flows.iso_lmp import dataset, samples
from flows.iso_lmp.base import Market
from flows.ml_pipeline import dataset as ml_dataset
from flows.ml_pipeline import features as ml_features
from flows.ml_pipeline import model as ml_model
from flows.ml_pipeline import params as ml_params

INJECTED = "injected.csv"
EVIL = f"a'; COPY (SELECT 42) TO '{INJECTED}'; SET temp_directory='b\"c"
DA = Market.DAY_AHEAD_HOURLY


@pytest.fixture
def evil_root(tmp_path, monkeypatch) -> Path:
    """A directory with an SQL-looking name, and the working directory a COPY would hit."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / EVIL
    root.mkdir()
    return root


def _no_injection(tmp_path: Path) -> None:
    assert not list(tmp_path.rglob(INJECTED)), "a path was run as SQL"
    assert not Path(INJECTED).exists()


def test_iso_lmp_revisions_published_from_an_sql_looking_directory(evil_root, tmp_path):
    raw, staging, out = evil_root / "raw", evil_root / "staging", evil_root / "out"
    zone = samples.write_day("NYISO", DA, samples.ORDINARY, raw, 3)
    # The same hours again, $1 dearer and newer: publication deduplicates in DuckDB, with its
    # spill directory and the list of staged files under the SQL-looking name.
    revised = samples.write_day("NYISO", DA, samples.ORDINARY, evil_root / "rev", 3, bump=100)
    gen = raw / zone.name.replace("_zone", "_gen")
    os.replace(revised, gen)
    os.utime(zone, ns=(1_000_000_000_000, 1_000_000_000_000))
    os.utime(gen, ns=(2_000_000_000_000, 2_000_000_000_000))
    for path in (zone, gen):
        dataset.convert_file("NYISO", DA.value, str(path), str(staging), 16)
    months = sorted({p.stem for p in (staging / "NYISO" / DA.value).glob("*/*.parquet")})
    for month in months:
        dataset.publish_partition("NYISO", DA.value, month, str(staging), str(out), 16)
    assert (staging / ".duckdb-spill").is_dir()  # the statement with the path did run
    truth = samples.truth("NYISO", DA, samples.ORDINARY, 3, bump=100)
    table = dataset.read_dataset(str(out))
    assert table.num_rows == truth.num_rows
    assert pc.sum(table.column("lmp")).as_py() == pytest.approx(pc.sum(truth.column("lmp")).as_py())
    _no_injection(tmp_path)


def test_caiso_pivot_spills_under_an_sql_looking_temporary_directory(
    evil_root, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(evil_root))  # where the pivot's work dir goes
    raw, staging = tmp_path / "raw", tmp_path / "staging"
    path = samples.write_day("CAISO", DA, samples.ORDINARY, raw, 4)
    dataset.convert_file("CAISO", DA.value, str(path), str(staging), 16)
    staged = list((staging / "CAISO").rglob("*.parquet"))
    assert staged
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in staged)
    assert rows == samples.truth("CAISO", DA, samples.ORDINARY, 4).num_rows
    _no_injection(tmp_path)


def test_ml_features_train_and_evaluate_under_sql_looking_directories(evil_root, tmp_path):
    data = evil_root / "data"
    generate_dataset_local(
        data, transactions=12_000, seed=5, start="2024-01-01", end="2024-01-31", files=3
    )
    features_dir = evil_root / "features"
    # One batch per file: COPY ... TO each part and a count read back from it.
    built = ml_features.build_features(str(data), str(features_dir), 1, cap_mb=512)
    assert built["rows"] == 12_000
    assert len(list(features_dir.glob("part-*.parquet"))) == 3
    health = ml_dataset.check_dataset(str(data), min_fraud_rows=1)
    train_end, test_start = ml_params.resolve_split(
        ml_params.TrainParams(dataset="x"), health["min_ts_ms"], health["max_ts_ms"]
    )
    model = {"learning_rate": 0.1, "max_iter": 5, "max_leaf_nodes": 7}
    model |= {"min_samples_leaf": 5, "l2_regularization": 0.0}
    training = ml_model.train_model(
        str(features_dir), str(evil_root / "model.pkl"), train_end, model, 1, 100_000, 512
    )
    assert training["sampled_rows"] > 0 and training["train_rows"] > 0
    metrics = ml_model.evaluate_model(
        str(features_dir), training["model_path"], test_start, str(evil_root / "m.json"), 0.01
    )
    assert metrics["rows"] > 0
    _no_injection(tmp_path)


def test_stream_sink_memory_limit_is_a_bind_parameter(evil_root, tmp_path, monkeypatch):
    """The sink's DuckDB memory_limit (from the task's cap) is bound, not pasted into SQL."""
    import duckdb

    from flows.stream_stats.sink.store import StreamState
    from flows.stream_stats.windows import WindowSpec

    statements: list[tuple[str, object]] = []
    connect = duckdb.connect

    class Recording:
        """The real connection; every statement's text and parameters noted."""

        def __init__(self, *args, **kwargs) -> None:
            self.db = connect(*args, **kwargs)

        def execute(self, sql, parameters=None):
            statements.append((sql, parameters))
            return self.db.execute(sql, parameters)

        def __getattr__(self, name):
            return getattr(self.db, name)

    monkeypatch.setattr(duckdb, "connect", Recording)
    spec = WindowSpec(60_000, 60_000, 300_000, ("merchant_category", "channel"))
    state = StreamState(evil_root / "sink.duckdb", spec, "embedded:x", memory_mb=123.4)
    try:
        limit = state.db.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    finally:
        state.close()
    assert limit == "123.0 MiB"  # applied: duckdb_limit rounds down to whole MiB
    setting = [(sql, p) for sql, p in statements if "memory_limit" in sql and "SET" in sql]
    assert setting == [("SET memory_limit = ?", ["123MiB"])]
    assert not any("123MiB" in sql for sql, _ in statements)
    _no_injection(tmp_path)
