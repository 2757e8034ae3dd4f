"""The contract between workloads: fraud_synth writes the transactions that ml_pipeline and
stream_stats read. Each reader runs here on a dataset the real generator wrote."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest

from flows.fraud_synth.generate import generate_dataset_local
from flows.fraud_synth.spec import transaction_schema
from flows.ml_pipeline import dataset as ml_dataset
from flows.ml_pipeline.schema import TRANSACTION_COLUMNS
from flows.stream_stats.events import KEY_FIELDS
from flows.stream_stats.sources.embedded import read_events
from headroom import BadInput


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("fraud")
    generate_dataset_local(
        root, transactions=8_000, seed=5, start="2024-01-01", end="2024-01-03", files=2
    )
    return str(root)


def _transactions(dataset: str):
    manifest = ml_dataset.read_manifest(dataset)
    paths = [f"{dataset}/{entry['path']}" for entry in ml_dataset.ordered_files(manifest)]
    return pq.ParquetDataset(paths).read()


def test_the_generators_schema_has_every_column_ml_reads_with_its_type():
    assert ml_dataset.schema_problems(transaction_schema(), "fraud_synth") == []
    without_amount = transaction_schema().remove(transaction_schema().get_field_index("amount"))
    assert ml_dataset.schema_problems(without_amount, "x") == ["x: column 'amount' is missing"]
    assert set(TRANSACTION_COLUMNS) <= set(transaction_schema().names)


def test_ml_pipelines_health_check_passes_a_generated_dataset(dataset):
    report = ml_dataset.check_dataset(dataset, min_fraud_rows=1)
    table = _transactions(dataset)
    assert report["rows"] == table.num_rows == 8_000
    with pytest.raises(BadInput, match="min_fraud_rows"):  # the check does read the counts
        ml_dataset.check_dataset(dataset, min_fraud_rows=table.num_rows + 1)


def test_stream_stats_reads_every_generated_transaction_as_written(dataset):
    table = _transactions(dataset)
    events = read_events(dataset)
    fields = ("customer_id", "is_fraud", *KEY_FIELDS)
    written = Counter(zip(*(table.column(f).to_pylist() for f in fields), strict=True))
    read = Counter(tuple(event[f] for f in fields) for event in events)
    assert len(events) == table.num_rows
    assert read == written
    assert sum(e["amount"] for e in events) == pytest.approx(
        sum(table.column("amount").to_pylist()), rel=1e-6
    )
    assert sum(e["is_fraud"] for e in events) > 0
