"""MITMA OD under bad input and machine faults: loaded days are never replaced by less, rejects
are counted per row, and a disk that cannot be written is reported as what it is."""

from __future__ import annotations

import csv
import gzip
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from flows.mitma_od import bronze, discover, samples, schema
from headroom import BadInput

DAY = date(2022, 5, 1)
ZONE = "municipios"


def _stage(tmp_path: Path, raw: Path, name: str, day: date = DAY) -> dict:
    stem = name.removesuffix(".csv.gz")
    return bronze.stage_day(
        str(raw),
        str(tmp_path / "staging" / f"{stem}.parquet"),
        str(tmp_path / "rejects" / f"{stem}.rejects.csv"),
        day.isoformat(),
        ZONE,
        name,
        temp_root=str(tmp_path / "tmp"),
    )


def _load(database: Path, staged: dict, **kwargs) -> dict:
    return bronze.load_day(
        str(database),
        staged["staging"],
        staged["day"],
        staged["zone_type"],
        staged["source_file"],
        staged["rejected"],
        **kwargs,
    )


def _loads_table(database: Path) -> list[tuple]:
    con = duckdb.connect(str(database), read_only=True)
    try:
        return con.execute(
            "SELECT fecha, source_file, rows, rejected FROM mitma_loads ORDER BY fecha"
        ).fetchall()
    finally:
        con.close()


def _republish(path: Path, lines: list[str]) -> None:
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def _lines(raw: Path) -> list[str]:
    return gzip.decompress(raw.read_bytes()).decode().splitlines()


@pytest.fixture
def loaded(tmp_path: Path) -> tuple[Path, samples.SampleFile, Path]:
    """A database with one day of 3,000 rows loaded; (database, its sample, its raw file)."""
    mirror = tmp_path / "mirror"
    sample = samples.write_day(mirror, ZONE, DAY, 3_000, seed=1)
    database = tmp_path / "od.duckdb"
    _load(database, _stage(tmp_path / "first", mirror / sample.relpath, sample.name))
    assert bronze.day_totals(str(database), ZONE) == {DAY: (3_000, sample.viajes)}
    return database, sample, mirror / sample.relpath


def test_a_loaded_day_republished_header_only_is_refused_and_kept(tmp_path, loaded):
    database, sample, raw = loaded
    _republish(raw, ["|".join(schema.COLUMNS)])
    staged = _stage(tmp_path / "again", raw, sample.name)
    assert staged["rows"] == 0
    with pytest.raises(BadInput, match=rf"{sample.name}: 0 rows would replace the 3,000 loaded"):
        _load(database, staged)
    assert bronze.day_totals(str(database), ZONE) == {DAY: (3_000, sample.viajes)}
    assert [r[2] for r in _loads_table(database)] == [3_000]


def test_a_smaller_replacement_is_refused_unless_the_parameter_allows_it(tmp_path, loaded):
    database, sample, raw = loaded
    lines = _lines(raw)
    _republish(raw, lines[:1_001])  # the header and the first 1,000 rows
    staged = _stage(tmp_path / "again", raw, sample.name)
    with pytest.raises(BadInput, match=r"1,000 rows would replace the 3,000 loaded.*90%"):
        _load(database, staged)
    assert bronze.day_totals(str(database), ZONE) == {DAY: (3_000, sample.viajes)}
    # Declared on purpose: a third of the rows is accepted at a share of 0.3.
    result = _load(database, staged, min_replace_share=0.3)
    assert (result["rows"], result["replaced"]) == (1_000, 3_000)
    assert bronze.day_totals(str(database), ZONE)[DAY][0] == 1_000


def test_an_empty_replacement_is_accepted_only_at_share_zero(tmp_path, loaded):
    database, sample, raw = loaded
    _republish(raw, ["|".join(schema.COLUMNS)])
    staged = _stage(tmp_path / "again", raw, sample.name)
    with pytest.raises(BadInput):
        _load(database, staged, min_replace_share=0.01)
    assert bronze.day_totals(str(database), ZONE)[DAY][0] == 3_000
    _load(database, staged, min_replace_share=0)
    assert bronze.day_totals(str(database), ZONE) == {}


def test_garbage_lines_count_once_each_not_once_per_bad_column(tmp_path):
    mirror = tmp_path / "mirror"
    sample = samples.write_day(mirror, ZONE, DAY, 3_000, seed=4)
    lines = _lines(mirror / sample.relpath)
    garbage = "|".join(["x"] * len(schema.COLUMNS))  # every column bad: 15 reject records
    positions = [10, 500, 1_000, 1_500, 2_000, 2_500, 2_990]
    for offset, position in enumerate(positions):
        lines.insert(position + offset, garbage)
    raw = mirror / sample.relpath
    _republish(raw, lines)
    staged = _stage(tmp_path, raw, sample.name)
    assert (staged["rows"], staged["rejected"]) == (3_000, 7)  # 7 of 3,007: under 1 %
    with open(staged["rejects"], newline="") as handle:
        rejects = list(csv.DictReader(handle))
    bad_lines = [p + i + 1 for i, p in enumerate(positions)]  # 1-based, after the header
    assert [int(r["line"]) for r in rejects] == bad_lines
    assert {r["file"] for r in rejects} == {sample.name}
    database = tmp_path / "od.duckdb"
    _load(database, staged)
    assert bronze.day_totals(str(database), ZONE) == {DAY: (3_000, sample.viajes)}
    assert _loads_table(database) == [(DAY, sample.name, 3_000, 7)]


def test_a_row_of_another_day_is_rejected_with_its_line_not_the_file(tmp_path):
    mirror = tmp_path / "mirror"
    sample = samples.write_day(mirror, ZONE, DAY, 3_000, seed=5)
    lines = _lines(mirror / sample.relpath)
    foreign = lines[1].replace(f"{DAY:%Y%m%d}", f"{DAY + timedelta(days=1):%Y%m%d}", 1)
    lines.insert(1_201, foreign)  # line 1,202 of the file
    raw = mirror / sample.relpath
    _republish(raw, lines)
    staged = _stage(tmp_path, raw, sample.name)
    assert (staged["rows"], staged["rejected"]) == (3_000, 1)
    with open(staged["rejects"], newline="") as handle:
        [reject] = list(csv.DictReader(handle))
    assert (reject["file"], int(reject["line"]), reject["column"]) == (sample.name, 1_202, "fecha")
    assert reject["error_message"] == f"fecha is not {DAY.isoformat()}"
    database = tmp_path / "od.duckdb"
    _load(database, staged)
    assert bronze.day_totals(str(database), ZONE) == {DAY: (3_000, sample.viajes)}


@pytest.mark.parametrize("content", [b"", gzip.compress(b"")], ids=["zero-byte", "empty-gzip"])
def test_an_empty_file_is_reported_as_empty(tmp_path, content):
    name = discover.daily_name(ZONE, DAY)
    raw = tmp_path / name
    raw.write_bytes(content)
    with pytest.raises(BadInput, match=rf"^{name}: empty file \({len(content)} bytes"):
        _stage(tmp_path, raw, name)
    assert not (tmp_path / "staging").exists()  # refused before anything was written


def test_a_full_disk_under_the_database_is_one_output_error_and_keeps_loaded_days(
    tmp_path, small_disk
):
    from headroom import OutputUnavailable

    disk = small_disk("2m")
    mirror = tmp_path / "mirror"
    small = samples.write_day(mirror, ZONE, DAY, 2_000, seed=1)
    big = samples.write_day(mirror, ZONE, DAY + timedelta(days=1), 100_000, seed=2)
    first = _stage(tmp_path, mirror / small.relpath, small.name)
    second = _stage(tmp_path, mirror / big.relpath, big.name, DAY + timedelta(days=1))
    database = disk / "od.duckdb"
    _load(database, first)
    with pytest.raises(OutputUnavailable, match="No space left on device") as caught:
        bronze.load_days(str(database), [second])
    assert caught.value.path == str(database) and caught.value.errno == 28
    assert bronze.day_totals(str(database), ZONE) == {DAY: (2_000, small.viajes)}
    assert _loads_table(database) == [(DAY, small.name, 2_000, 0)]


def test_a_full_staging_disk_is_an_output_error_not_bad_input(tmp_path, small_disk):
    from headroom import OutputUnavailable

    disk = small_disk("256k")
    mirror = tmp_path / "mirror"
    sample = samples.write_day(mirror, ZONE, DAY, 50_000, seed=3)
    with pytest.raises(OutputUnavailable, match="No space left on device") as caught:
        bronze.stage_day(
            str(mirror / sample.relpath),
            str(disk / "staging" / "day.parquet"),
            str(disk / "rejects" / "day.rejects.csv"),
            DAY.isoformat(),
            ZONE,
            sample.name,
        )
    assert caught.value.path == str(disk / "staging")
    assert not list((disk / "staging").iterdir())  # no half-written staging file


def test_discovery_does_not_retry_bad_input(tmp_path, prefect_harness):
    from flows.mitma_od.flow import discover_files

    started = time.monotonic()
    with pytest.raises(BadInput, match="neither a URL nor an existing directory"):
        discover_files(str(tmp_path / "no-such-mirror"), ZONE, [DAY])
    # Two retries 5 s apart took over 10 s; a terminal error ends the task at once.
    assert time.monotonic() - started < 5
