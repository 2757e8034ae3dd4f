"""The flows on a temporary Prefect server: an output that cannot be written fails the run once,
up front, before any input is read; impossible fraud_synth plans fail before any work."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from flows.mitma_od import samples
from headroom import BadInput, OutputUnavailable

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

DAY = date(2023, 1, 9)


def test_mitma_od_on_a_read_only_database_disk_fails_once_before_reading(tmp_path, read_only_disk):
    from flows.mitma_od.flow import ingest_mitma_od

    mirror = tmp_path / "mirror"
    samples.write_samples(mirror, DAY, 3, zone_types=["GAU"], rows_per_day=500)
    cache = tmp_path / "cache"
    state = ingest_mitma_od(
        start_date=DAY,
        end_date=DAY + timedelta(days=2),
        zone_type="GAU",
        source=str(mirror),
        database=str(read_only_disk / "od.duckdb"),
        cache_dir=str(cache),
        return_state=True,
    )
    error = state.result(raise_on_failure=False)
    assert isinstance(error, OutputUnavailable), error
    assert error.path == str(read_only_disk) and "Read-only file system" in str(error)
    assert not list(cache.rglob("*.parquet")), "no day was staged"
    assert not list(read_only_disk.iterdir())


def test_iso_lmp_on_a_read_only_dataset_disk_fails_once_before_reading(tmp_path, read_only_disk):
    from flows.iso_lmp import dataset
    from flows.iso_lmp import samples as iso_samples
    from flows.iso_lmp.flow import convert_iso_lmp

    raw = tmp_path / "raw"
    iso_samples.write_samples(raw, isos=["NYISO", "MISO"], days=[iso_samples.ORDINARY], nodes=3)
    state = convert_iso_lmp(
        iso=["NYISO", "MISO"],
        start=iso_samples.ORDINARY,
        end=iso_samples.ORDINARY,
        raw=str(raw),
        out=str(read_only_disk / "dataset"),
        return_state=True,
    )
    error = state.result(raise_on_failure=False)
    assert isinstance(error, OutputUnavailable), error
    assert error.path == str(read_only_disk / "dataset")
    staging = Path(dataset.staging_root_for(raw))
    assert not [p for p in staging.rglob("*") if p.is_file()], "no file was staged"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"file_size": "1B"}, "parameter file_size: must be at least 1MB"),
        ({"size": "30GB", "file_size": "1KB"}, "parameter file_size: must be at least 1MB"),
        ({"transactions": 10_000_000_000, "file_size": "1MB"}, "plans 189,999 files"),
    ],
)
def test_fraud_synth_refuses_a_plan_of_too_many_files(tmp_path, change, expected):
    from flows.fraud_synth.flow import generate_fraud_dataset

    out = tmp_path / "fraud"
    params = {"size": None, "transactions": None, "start": date(2024, 2, 1), **change}
    if params["size"] is None and params["transactions"] is None:
        params["size"] = "1GB"
    state = generate_fraud_dataset(out=str(out), return_state=True, **params)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BadInput), error
    assert "file_size" in str(error) and expected in str(error)
    assert not out.exists()


def test_iso_lmp_run_fails_naming_a_partition_it_would_shrink(tmp_path):
    from flows.iso_lmp import dataset
    from flows.iso_lmp import samples as iso_samples
    from flows.iso_lmp.base import Market
    from flows.iso_lmp.flow import convert_iso_lmp
    from headroom.prefect import ItemFailures

    raw, out = tmp_path / "raw", tmp_path / "out"
    days = [iso_samples.ORDINARY, iso_samples.ORDINARY + timedelta(days=1)]
    market = Market.DAY_AHEAD_HOURLY
    paths = [iso_samples.write_day("NYISO", market, day, raw, 3) for day in days]
    params = dict(iso="NYISO", start=days[0], end=days[1], raw=str(raw), out=str(out))
    first = convert_iso_lmp(**params)
    published = sum(iso_samples.truth("NYISO", market, day, 3).num_rows for day in days)
    assert (first["failed"], first["rows_published"]) == (0, published)
    paths[1].write_text(paths[1].read_text().splitlines()[0] + "\n")  # header only
    with pytest.raises(ItemFailures) as caught:
        convert_iso_lmp(**params)
    [(name, reason)] = caught.value.failures
    assert name == dataset.partition_path("NYISO", market.value, "2024-01")
    assert f"would replace the {published:,} published" in reason
    assert dataset.read_dataset(str(out)).num_rows == published
