"""Pure tests of the fraud generator: layout, determinism, fraud scenarios, atomicity, S3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from flows.fraud_synth import generate as gen
from flows.fraud_synth import spec as fspec
from flows.fraud_synth import world_cache
from flows.fraud_synth.params import FraudSynthParams
from flows.fraud_synth.world import build_world
from headroom.errors import BadInput
from headroom.storage import TMP_MARK, open_storage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fraud")
    manifest = gen.generate_dataset_local(
        out, transactions=300_000, seed=7, start="2024-03-01", end="2024-03-20", files=3,
        fraud_rate=0.02,
    )  # fmt: skip
    return out, manifest


def read(out: Path, entry: dict):
    return pq.read_table(out / entry["path"])


def test_layout_schema_order_and_manifest(dataset: tuple[Path, dict]) -> None:
    out, manifest = dataset
    assert manifest["complete"] and manifest["schema_version"] == 1
    assert [e["index"] for e in manifest["files"]] == [0, 1, 2]
    assert sum(e["rows"] for e in manifest["files"]) == manifest["rows"] == 300_000
    previous_max = None
    ids = []
    for entry in manifest["files"]:
        table = read(out, entry)
        assert table.schema.equals(gen.transaction_schema())
        assert table.num_rows == entry["rows"]
        assert (out / entry["path"]).stat().st_size == entry["bytes"]
        ts = table.column("ts").cast("int64").to_numpy()
        assert np.all(np.diff(ts) >= 0), "rows inside a file are in time order"
        assert ts[0] == entry["min_ts_ms"] and ts[-1] == entry["max_ts_ms"]
        if previous_max is not None:
            assert previous_max <= ts[0], "files are in time order"
        previous_max = ts[-1]
        assert gen.content_checksum(table) == entry["checksum"]
        scenario = table.column("fraud_scenario").to_pandas().astype(str)
        counted = scenario.value_counts().to_dict()
        assert entry["fraud"] == {s: counted.get(s, 0) for s in gen.FRAUD_SCENARIOS}
        assert table.column("is_fraud").to_numpy().sum() == sum(entry["fraud"].values())
        ids.append(table.column("transaction_id").to_numpy())
    ids = np.concatenate(ids)
    assert np.array_equal(ids, np.arange(300_000)), "ids unique and dense"
    start, end = fspec._day_ms("2024-03-01"), fspec._day_ms("2024-03-21")
    assert start <= manifest["files"][0]["min_ts_ms"] and previous_max < end
    assert not list(out.rglob(f"{TMP_MARK}*"))


def test_references_hold(dataset: tuple[Path, dict]) -> None:
    out, manifest = dataset
    customers = pq.read_table(out / "customers.parquet").to_pandas()
    devices = pq.read_table(out / "devices.parquet").to_pandas()
    merchants = pq.read_table(out / "merchants.parquet").to_pandas()
    assert len(customers) == manifest["reference_rows"]["customers"]
    assert np.array_equal(customers.customer_id, np.arange(len(customers)))
    assert np.array_equal(devices.device_id, np.arange(len(devices)))
    table = pq.read_table(out / manifest["files"][1]["path"]).to_pandas()
    assert table.customer_id.between(0, len(customers) - 1).all()
    assert table.device_id.between(0, len(devices) - 1).all()
    category = merchants.set_index("merchant_id").merchant_category.astype(str)
    assert (category.loc[table.merchant_id].to_numpy() == table.merchant_category.astype(str)).all()
    owner = devices.set_index("device_id").customer_id.loc[table.device_id].to_numpy()
    genuine = table.fraud_scenario.astype(str) == "none"
    # A genuine payment uses one of the customer's own devices.
    assert (owner[genuine.to_numpy()] == table.customer_id[genuine].to_numpy()).all()


def test_fraud_scenarios_look_like_fraud(dataset: tuple[Path, dict]) -> None:
    out, manifest = dataset
    frame = pq.read_table(out / manifest["files"][0]["path"]).to_pandas()
    frame["scenario"] = frame.fraud_scenario.astype(str)
    rate = frame.is_fraud.mean()
    assert 0.012 < rate < 0.03, rate  # asked for 0.02
    assert set(gen.FRAUD_SCENARIOS) <= set(frame.scenario)
    assert (frame.amount[frame.scenario == "amount_outlier"] > 250).all()
    genuine_median = frame.amount[frame.scenario == "none"].median()
    testing = frame[frame.scenario == "card_testing"]
    assert (testing.ts.dt.hour < gen.NIGHT_HOURS).all()
    assert (testing.amount <= 5).all() and (testing.channel.astype(str) == "online").all()
    # Bursts: consecutive rows of one card, so far fewer distinct cards than rows.
    assert testing.customer_id.nunique() * 3 < len(testing)
    takeover = frame[frame.scenario == "account_takeover"]
    assert takeover.amount.median() > 2 * genuine_median
    devices = pq.read_table(out / "devices.parquet").to_pandas().set_index("device_id")
    assert (devices.kind.astype(str).loc[takeover.device_id] == "fraudster").all()
    # A compromised device keeps its owner, used far from home within its window.
    stolen = frame[frame.scenario == "compromised_device"]
    owner = devices.customer_id.loc[stolen.device_id].to_numpy()
    assert (owner == stolen.customer_id.to_numpy()).all()
    spec = gen.DatasetSpec.from_dict(manifest["spec"])
    world = build_world(spec)
    begin, end = world.takeover_windows.bounds_ms(np.arange(world.takeover_windows.count))
    ts = takeover.ts.dt.tz_localize(None).to_numpy().astype("datetime64[ms]").astype(np.int64)
    victims = takeover.customer_id.to_numpy()
    inside = [
        np.any((world.takeover_victims == v) & (begin <= t) & (t <= end))
        for v, t in zip(victims, ts, strict=True)
    ]
    assert len(inside) > 0 and all(inside)


def _row_group_sizes(rows: int, chunk: int) -> list[int]:
    """Row groups of a file of ``rows`` rows: slices of one block below a block, else as many
    whole blocks as fit ``chunk``."""
    block = gen.BLOCK_ROWS
    blocks = [min(block, rows - start) for start in range(0, rows, block)]
    if chunk < block:
        return [min(chunk, size - offset) for size in blocks for offset in range(0, size, chunk)]
    per_group = chunk // block
    return [sum(blocks[i : i + per_group]) for i in range(0, len(blocks), per_group)]


def test_same_rows_for_any_chunk_size_same_bytes_for_same_chunk(tmp_path: Path) -> None:
    spec = gen.plan_dataset(transactions=200_000, seed=3, files=2).to_dict()
    entries = {}
    for chunk in (4_096, 65_536, 150_000, 10**7):
        out = tmp_path / f"chunk-{chunk}"
        entries[chunk] = gen.write_transaction_file(str(out), spec, 1, rows_per_chunk=chunk)
        metadata = pq.ParquetFile(out / entries[chunk]["path"]).metadata
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        assert sizes == _row_group_sizes(100_000, chunk), chunk
    assert len({e["checksum"] for e in entries.values()}) == 1
    assert len({e["bytes"] for e in entries.values()}) > 1, "row groups did change"
    again = gen.write_transaction_file(str(tmp_path / "again"), spec, 1, rows_per_chunk=65_536)
    first = (tmp_path / "chunk-65536" / again["path"]).read_bytes()
    assert (tmp_path / "again" / again["path"]).read_bytes() == first
    assert gen.file_checksum(str(tmp_path / "chunk-4096" / again["path"])) == again["checksum"]
    other = gen.plan_dataset(transactions=200_000, seed=4, files=2).to_dict()
    assert gen.write_transaction_file(str(tmp_path / "o"), other, 1)["checksum"] != first


def test_failing_writer_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = gen.plan_dataset(transactions=300_000, files=1).to_dict()
    real = gen.generate_block

    def fail_at_third_block(world, index, block):
        if block == 2:
            raise OSError("disk went away")
        return real(world, index, block)

    monkeypatch.setattr(gen, "generate_block", fail_at_third_block)
    with pytest.raises(OSError, match="disk went away"):
        gen.write_transaction_file(str(tmp_path), spec, 0, rows_per_chunk=65_536)
    assert not (tmp_path / gen.part_path(0)).exists()
    assert not (tmp_path / gen.sidecar_path(0)).exists()
    assert not list(tmp_path.rglob(f"{TMP_MARK}*")), "the temporary file is removed"


def test_killed_writer_leaves_no_final_file(tmp_path: Path) -> None:
    spec = gen.plan_dataset(transactions=6_000_000, files=1, customers=2_000)
    code = (
        "import json, sys; from flows.fraud_synth import generate as g; "
        "g.write_transaction_file(sys.argv[1], json.loads(sys.argv[2]), 0, rows_per_chunk=65536)"
    )
    import json

    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path), json.dumps(spec.to_dict())],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 30
    temporaries: list[Path] = []
    while time.monotonic() < deadline and child.poll() is None:
        temporaries = [p for p in tmp_path.rglob(f"{TMP_MARK}*") if p.stat().st_size > 1 << 20]
        if temporaries:
            break
        time.sleep(0.02)
    assert temporaries, "the writer had written a part of the file"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (tmp_path / gen.part_path(0)).exists()
    storage = open_storage(tmp_path)
    assert gen.completed_entries(storage, spec) == {}
    removed = storage.remove_temporaries()
    assert removed and not list(tmp_path.rglob(f"{TMP_MARK}*"))


def test_resume_uses_finished_files_of_the_same_spec_only(tmp_path: Path) -> None:
    spec = gen.plan_dataset(transactions=90_000, files=3, seed=1)
    entry = gen.write_transaction_file(str(tmp_path), spec.to_dict(), 1)
    storage = open_storage(tmp_path)
    assert list(gen.completed_entries(storage, spec)) == [1]
    other = gen.plan_dataset(transactions=90_000, files=3, seed=2)
    assert gen.completed_entries(storage, other) == {}
    # A file that does not match its entry (truncated, replaced) is not trusted.
    (tmp_path / entry["path"]).write_bytes(b"PAR1")
    assert gen.completed_entries(storage, spec) == {}
    manifest = gen.generate_dataset_local(tmp_path, transactions=90_000, files=3, seed=1)
    assert manifest["complete"] and manifest["files"][1]["checksum"] == entry["checksum"]
    assert gen.completed_entries(storage, spec).keys() == {0, 1, 2}


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"size": "0MB"}, "size"),
        ({"size": "lots"}, "size"),
        ({"start": "2024-05-01", "end": "2024-04-01"}, "end"),
        ({"fraud_rate": 1.5}, "fraud_rate"),
        ({"fraud_rate": -0.1}, "fraud_rate"),
        ({"compression": "rar"}, "compression"),
        ({"transactions": 0}, "transactions"),
        ({"file_size": "0"}, "file_size"),
        ({"seed": -1}, "seed"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_parameters_name_the_parameter(values: dict, named: str) -> None:
    with pytest.raises(BadInput, match=named):
        FraudSynthParams.parse(**values)


def test_plan_rejects_and_sizes() -> None:
    with pytest.raises(BadInput, match="end"):
        gen.plan_dataset(transactions=10, start="2024-02-02", end="2024-02-01")
    with pytest.raises(BadInput, match="fraud_rate"):
        gen.plan_dataset(transactions=10, fraud_rate=2)
    params = FraudSynthParams.parse(size="1GB", file_size="128MB")
    spec = params.dataset_spec()
    per_row = fspec.BYTES_PER_TRANSACTION["zstd"]
    assert spec.transactions == round(1e9 / per_row)
    assert spec.files == -(-spec.transactions // round(128e6 / per_row))
    assert FraudSynthParams.parse(transactions=5, size=None).dataset_spec().transactions == 5


def test_free_space_check_names_out(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="out: .* GB free"):
        gen.check_free_space(open_storage(tmp_path), 10**18)
    gen.check_free_space(open_storage(tmp_path), 1)


def test_s3_output(s3_bucket: str, tmp_path: Path) -> None:
    import boto3

    out = f"s3://{s3_bucket}/fraud/run1"
    manifest = gen.generate_dataset_local(out, transactions=70_000, files=2, seed=5)
    assert manifest["complete"]
    storage = open_storage(out)
    for entry in manifest["files"]:
        assert storage.size(entry["path"]) == entry["bytes"]
        path = storage.path(entry["path"])
        assert gen.file_checksum(path, storage.filesystem) == entry["checksum"]
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert "fraud/run1/manifest.json" in keys and "fraud/run1/customers.parquet" in keys
    assert not [k for k in keys if TMP_MARK in k], "temporary keys are deleted after publishing"
    local = gen.write_transaction_file(str(tmp_path), manifest["spec"], 1)
    assert local["checksum"] == manifest["files"][1]["checksum"], "same rows wherever written"


def test_cached_world_is_the_built_world_and_writes_the_same_rows(tmp_path: Path) -> None:
    from dataclasses import fields

    spec = gen.plan_dataset(transactions=150_000, seed=8, files=1)
    key = gen.fingerprint(spec)
    root = tmp_path / "worlds"
    built = world_cache.cached_world(spec, key, root)  # a miss: built, then saved
    assert (root / key / world_cache.META).is_file()
    mapped = world_cache.cached_world(spec, key, root)  # a hit: mapped read-only
    assert isinstance(mapped.customer_record, np.memmap)
    for item in fields(built):
        one, other = getattr(built, item.name), getattr(mapped, item.name)
        if isinstance(one, np.ndarray):
            assert one.dtype == other.dtype and np.array_equal(one, other), item.name
        else:
            assert one == other, item.name
    with pytest.raises(ValueError):
        mapped.customer_pool[0] = 1  # nothing can change a shared world

    def rows_of(world) -> str:
        import hashlib

        hasher = hashlib.sha256()
        tally = np.zeros(len(gen.SCENARIOS), dtype=np.int64)
        for _ in gen.iter_batches(world, 0, 65_536, hasher, tally):
            pass
        return hasher.hexdigest()

    assert rows_of(mapped) == rows_of(build_world(spec))


def test_damaged_or_foreign_world_cache_is_rebuilt(tmp_path: Path) -> None:
    spec = gen.plan_dataset(transactions=150_000, seed=9, files=1)
    other = gen.plan_dataset(transactions=150_000, seed=10, files=1)
    root = tmp_path / "worlds"
    key = gen.fingerprint(spec)
    world_cache.cached_world(spec, key, root)
    (root / key / "customer_pool.npy").write_bytes(b"not an array")
    rebuilt = world_cache.cached_world(spec, key, root)
    assert np.array_equal(rebuilt.customer_pool, build_world(spec).customer_pool)
    saved_again = world_cache.cached_world(spec, key, root)  # the damaged one was replaced
    assert isinstance(saved_again.customer_pool, np.memmap)
    assert np.array_equal(saved_again.customer_pool, rebuilt.customer_pool)
    # A folder saved for another spec under this key is not taken for this one.
    world_cache.cached_world(other, "shared-key", root)
    assert world_cache.cached_world(spec, "shared-key", root).spec == spec


def test_world_cache_keeps_the_most_recent_worlds(tmp_path: Path) -> None:
    root = tmp_path / "worlds"
    keys = []
    for seed in range(world_cache.KEEP_WORLDS + 2):
        spec = gen.plan_dataset(transactions=20_000, seed=seed, files=1)
        keys.append(gen.fingerprint(spec))
        world_cache.cached_world(spec, keys[-1], root)
        time.sleep(0.01)  # distinct modification times
    assert sorted(p.name for p in root.iterdir()) == sorted(keys[-world_cache.KEEP_WORLDS :])
