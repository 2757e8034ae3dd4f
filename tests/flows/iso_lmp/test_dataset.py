"""Staging and publication: revisions, atomic partitions, S3, discovery, big-file checks."""

from __future__ import annotations

import os
from datetime import date, timedelta

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


def test_checksum_does_not_depend_on_how_rows_are_chunked():
    import pyarrow as pa

    table = samples.truth("PJM", DA, samples.ORDINARY, 5)
    whole = dataset.Checksum(table.schema)
    whole.update(table)
    pieces = dataset.Checksum(table.schema)
    pieces.update(table.slice(0, 7))  # one update per piece, as publication does per row group
    pieces.update(pa.Table.from_batches(table.slice(7).to_batches(max_chunksize=11)))
    assert pieces.hexdigest() == whole.hexdigest()


def _published_the_usual_way(raw_files, tmp_path):
    """The dataset that staging alone, then publication from the staged parts, builds."""
    staging, out = tmp_path / "usual-staging", tmp_path / "usual-out"
    months = set()
    for path in raw_files:
        months |= set(dataset.convert_file("SPP", DA.value, str(path), str(staging), 16)["months"])
    for month in sorted(months):
        dataset.publish_partition("SPP", DA.value, month, str(staging), str(out), 16)
    return dataset.read_dataset(str(out)), dataset.manifests(str(out))


def test_one_pass_publication_equals_publishing_the_staged_parts(tmp_path, caplog):
    days = [date(2024, 1, 30), date(2024, 1, 31), date(2024, 2, 1)]  # two UTC months
    raw_files = [samples.write_day("SPP", DA, day, tmp_path / "raw", 3) for day in days]
    staging, out = tmp_path / "staging", tmp_path / "out"
    with caplog.at_level("INFO", logger="flows.iso_lmp.dataset"):
        result = dataset.convert_files(
            "SPP", [str(p) for p in raw_files], str(staging), 16, str(out)
        )
    assert "written in one pass" in caplog.text
    expected, manifests = _published_the_usual_way(raw_files, tmp_path)
    assert dataset.read_dataset(str(out)).equals(expected)
    assert [(p["rows"], p["checksum"]) for p in result["partitions"]] == [
        (m["rows"], m["checksum"]) for m in manifests
    ]
    assert [p.name for p in staging.iterdir()] == ["SPP"]  # the one-pass files are gone


def test_a_file_failing_after_its_rows_went_by_is_left_out_of_one_pass(tmp_path):
    good = samples.write_day("SPP", DA, samples.ORDINARY, tmp_path / "good", 3)
    bad = samples.write_day("SPP", DA, samples.ORDINARY + timedelta(days=1), tmp_path / "bad", 3)
    rewrite(bad, lambda ls: ls + [ls[5]])  # a duplicate: found after every row was staged
    staging, out = tmp_path / "staging", tmp_path / "out"
    result = dataset.convert_files("SPP", [str(good), str(bad)], str(staging), 16, str(out))
    assert "duplicate interval" in result["files"][1]["error"]
    expected, _ = _published_the_usual_way([good], tmp_path)
    assert dataset.read_dataset(str(out)).equals(expected)


def test_one_pass_leftovers_of_a_killed_call_are_removed(tmp_path):
    from flows.iso_lmp.onepass import PREFIX, OnePass

    orphan = tmp_path / f"{PREFIX}999999999-dead"  # no such process
    orphan.mkdir()
    mine = tmp_path / f"{PREFIX}{os.getpid()}-alive"
    mine.mkdir()
    OnePass(tmp_path, 16).close()
    assert not orphan.exists() and mine.exists()


def test_all_distinct_agrees_with_a_set_of_pairs():
    import numpy as np

    rng = np.random.default_rng(5)
    hour = 3_600_000_000
    cases = []
    for _ in range(200):
        rows = int(rng.integers(2, 400))
        codes = rng.integers(0, int(rng.integers(1, 50)), rows)
        step = int(rng.choice([hour, 300_000_000, 1, 7]))
        starts = 1_700_000_000_000_000 + rng.integers(0, int(rng.integers(1, 60)), rows) * step
        cases.append((codes, starts))
    cases.append((np.array([4, 4]), np.array([10, 10])))  # one start, twice
    verdicts = []
    for codes, starts in cases:
        expected = len(set(zip(codes.tolist(), starts.tolist(), strict=True))) == len(codes)
        assert dataset._all_distinct(codes, starts) == expected, (codes, starts)
        verdicts.append(expected)
    assert True in verdicts and False in verdicts  # both answers were exercised
    # Too wide to pack: "not known distinct", which sends the caller to the full sort.
    assert not dataset._all_distinct(np.arange(3), np.array([0, 1 << 61, 5]))
