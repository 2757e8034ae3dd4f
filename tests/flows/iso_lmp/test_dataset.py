"""Staging and publication: revisions, atomic partitions, S3, discovery, big-file checks."""

from __future__ import annotations

import os
from datetime import date

import pyarrow.compute as pc
import pytest

from flows.iso_lmp import dataset, samples
from flows.iso_lmp.base import IsoParseError, Market
from tests.flows.iso_lmp.contract import rewrite

DA = Market.DAY_AHEAD_HOURLY


def _publish_all(staging, out, iso="NYISO", market="DAY_AHEAD_HOURLY"):
    months = sorted({p.stem for p in (staging / iso / market).glob("*/*.parquet")})
    return [dataset.publish_partition(iso, market, m, str(staging), str(out), 16) for m in months]


def test_the_later_file_wins_and_reconverting_replaces(tmp_path):
    raw, staging, out = tmp_path / "raw", tmp_path / "staging", tmp_path / "out"
    zone = samples.write_day("NYISO", DA, samples.ORDINARY, raw, 3)
    # The same locations and hours again in another file, $1 dearer: a revision.
    revised = samples.write_day("NYISO", DA, samples.ORDINARY, tmp_path / "rev", 3, bump=100)
    gen = raw / zone.name.replace("_zone", "_gen")
    os.replace(revised, gen)
    rewrite(gen, lambda ls: ls)  # same content, written now
    os.utime(zone, ns=(1_000_000_000_000, 1_000_000_000_000))
    os.utime(gen, ns=(2_000_000_000_000, 2_000_000_000_000))
    for path in (zone, gen):
        dataset.convert_file("NYISO", DA.value, str(path), str(staging), 16)
    _publish_all(staging, out)
    truth = samples.truth("NYISO", DA, samples.ORDINARY, 3, bump=100)
    table = dataset.read_dataset(str(out))
    assert table.num_rows == truth.num_rows  # one row kept per (market, location, interval)
    assert pc.sum(table.column("lmp")).as_py() == pytest.approx(pc.sum(truth.column("lmp")).as_py())
    # The zone file becomes the later one: converting again swaps the partition back.
    os.utime(zone, ns=(3_000_000_000_000, 3_000_000_000_000))
    dataset.convert_file("NYISO", DA.value, str(zone), str(staging), 16)
    _publish_all(staging, out)
    plain = samples.truth("NYISO", DA, samples.ORDINARY, 3)
    assert pc.sum(dataset.read_dataset(str(out)).column("lmp")).as_py() == pytest.approx(
        pc.sum(plain.column("lmp")).as_py()
    )


def test_a_failed_publication_leaves_the_old_partition(tmp_path):
    raw, staging, out = tmp_path / "raw", tmp_path / "staging", tmp_path / "out"
    path = samples.write_day("NYISO", DA, samples.ORDINARY, raw, 3)
    dataset.convert_file("NYISO", DA.value, str(path), str(staging), 16)
    _publish_all(staging, out)
    before = dataset.manifests(str(out))
    part = next((staging / "NYISO").rglob("*.parquet"))
    part.write_bytes(part.read_bytes()[:100])  # a staged file cut short
    with pytest.raises(Exception, match="(?i)parquet|invalid|corrupt|magic"):
        _publish_all(staging, out)
    assert dataset.manifests(str(out)) == before
    assert dataset.read_dataset(str(out)).num_rows == before[0]["rows"]
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_month_boundary_splits_a_local_day_into_two_utc_months(tmp_path):
    raw, staging, out = tmp_path / "raw", tmp_path / "staging", tmp_path / "out"
    path = samples.write_day("NYISO", DA, date(2024, 1, 31), raw, 2)
    result = dataset.convert_file("NYISO", DA.value, str(path), str(staging), 16)
    assert result["months"] == ["2024-01", "2024-02"]  # 19:00 Eastern is midnight UTC
    published = _publish_all(staging, out)
    assert [p["rows"] for p in published] == [2 * 19, 2 * 5]
    assert [m["partition"] for m in dataset.manifests(str(out))] == [
        "iso=NYISO/market=DAY_AHEAD_HOURLY/year=2024/month=01",
        "iso=NYISO/market=DAY_AHEAD_HOURLY/year=2024/month=02",
    ]


def test_duplicates_in_a_big_file_are_found_on_disk(tmp_path):
    path = samples.write_day("SPP", DA, samples.ORDINARY, tmp_path, 3)
    rewrite(path, lambda ls: ls + [ls[5]])
    with pytest.raises(IsoParseError) as caught:
        dataset.convert_file("SPP", DA.value, str(path), str(tmp_path / "st"), 16, key_limit=10)
    assert (caught.value.line, caught.value.column) == (
        len(path.read_text().splitlines()),
        "GMTIntervalEnd",
    )


def test_discover_filters_isos_markets_and_days(tmp_path):
    written = samples.write_samples(tmp_path, isos=["MISO", "SPP"], nodes=1)
    (tmp_path / "miso" / "notes.txt").write_text("not a price file")
    found = dataset.discover(tmp_path, ["MISO"], [DA], samples.FALL_BACK, samples.ORDINARY)
    assert [(f.iso, f.market, f.day) for f in found] == [
        ("MISO", DA, samples.FALL_BACK),
        ("MISO", DA, samples.ORDINARY),
    ]
    assert len(
        dataset.discover(tmp_path, ["MISO", "SPP"], None, date(2020, 1, 1), date(2030, 1, 1))
    ) == len(written)


def test_publishes_to_s3(tmp_path, s3_bucket):
    raw, staging = tmp_path / "raw", tmp_path / "staging"
    path = samples.write_day("ERCOT", DA, samples.FALL_BACK, raw, 3)
    result = dataset.convert_file("ERCOT", DA.value, str(path), str(staging), 16)
    out = f"s3://{s3_bucket}/lmp"
    for month in result["months"]:
        dataset.publish_partition("ERCOT", DA.value, month, str(staging), out, 16)
    table = dataset.read_dataset(out)
    assert table.num_rows == 3 * 25
    assert [m["rows"] for m in dataset.manifests(out)] == [3 * 25]
