"""MITMA OD pure logic, no Prefect: sample files, discovery, download, staging, loading, disk."""

from __future__ import annotations

import csv
import gzip
import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest
from pydantic import ValidationError

from flows.mitma_od import bronze, cleanup, discover, download, samples, schema
from flows.mitma_od.params import MitmaParams
from headroom import BadInput, run_guarded_measured

DAY = date(2022, 5, 1)
ROOT = Path(__file__).resolve().parents[2]


def _stage(tmp_path: Path, sample: samples.SampleFile, mirror: Path, **kwargs) -> dict:
    stem = sample.name.removesuffix(".csv.gz")
    return bronze.stage_day(
        str(mirror / sample.relpath),
        str(tmp_path / "staging" / f"{stem}.parquet"),
        str(tmp_path / "rejects" / f"{stem}.rejects.csv"),
        kwargs.pop("day", sample.day.isoformat()),
        sample.zone_type,
        sample.name,
        temp_root=str(tmp_path / "tmp"),
        **kwargs,
    )


def _load(database: Path, staged: dict) -> dict:
    return bronze.load_day(
        str(database),
        staged["staging"],
        staged["day"],
        staged["zone_type"],
        staged["source_file"],
        staged["rejected"],
    )


def test_samples_are_deterministic_and_in_the_published_format(tmp_path):
    first = samples.write_day(tmp_path / "a", "GAU", DAY, 5_000, seed=3, bom=True)
    again = samples.write_day(tmp_path / "b", "GAU", DAY, 5_000, seed=3, bom=True)
    other = samples.write_day(tmp_path / "c", "GAU", DAY, 5_000, seed=4, bom=True)
    assert first.relpath == (
        "estudios_basicos/por-GAU/viajes/ficheros-diarios/2022-05/20220501_Viajes_GAU.csv.gz"
    )
    data = (tmp_path / "a" / first.relpath).read_bytes()
    assert data == (tmp_path / "b" / again.relpath).read_bytes()
    assert data != (tmp_path / "c" / other.relpath).read_bytes()

    text = gzip.decompress(data).decode("utf-8")
    assert text.startswith("\ufeff")
    lines = text.lstrip("\ufeff").splitlines()
    assert tuple(lines[0].split("|")) == schema.COLUMNS
    assert len(lines) == 1 + first.rows
    rows = [line.split("|") for line in lines[1:]]
    assert all(len(r) == 15 and r[0] == "20220501" for r in rows)
    assert {r[7] for r in rows} == {"si", "no"}
    assert "NA" in {r[12] for r in rows}
    assert {r[4] for r in rows} <= set(samples.DISTANCES)
    assert sum(int(r[13].replace(".", "")) for r in rows) == int(first.viajes * 1000)


def test_stage_and_load_match_the_generator_truth(tmp_path):
    mirror = tmp_path / "mirror"
    files = samples.write_samples(
        mirror,
        DAY,
        2,
        zone_types=["distritos"],
        rows_per_day=8_000,
        bad_rows={("distritos", DAY): 4},
        bom_days=[DAY + timedelta(days=1)],
    )
    database = tmp_path / "od.duckdb"
    staged = [_stage(tmp_path, f, mirror) for f in files]
    for result in staged:
        _load(database, result)

    assert bronze.day_totals(str(database), "distritos") == samples.expected_totals(
        files, "distritos"
    )
    # Rejects: file name and the exact line numbers the generator wrote bad lines at.
    bad = files[0]
    assert staged[0]["rejected"] == len(bad.bad_lines) == 4
    with open(staged[0]["rejects"], newline="") as handle:
        rejects = list(csv.DictReader(handle))
    assert {r["file"] for r in rejects} == {bad.name}
    assert tuple(int(r["line"]) for r in rejects) == bad.bad_lines
    assert staged[1]["rejects"] is None

    con = duckdb.connect(str(database), read_only=True)
    types = dict(
        con.execute("SELECT column_name, column_type FROM (DESCRIBE bronze_viajes)").fetchall()
    )
    assert types["fecha"] == "DATE" and types["periodo"] == "TINYINT"
    assert types["estudio_origen_posible"] == "BOOLEAN"
    nulls, hours, flags, files_seen = con.execute(
        """SELECT count(*) FILTER (WHERE sexo IS NULL), count(DISTINCT periodo),
                  count(DISTINCT estudio_origen_posible), count(DISTINCT source_file)
           FROM bronze_viajes"""
    ).fetchone()
    assert nulls > 0 and hours == 24 and flags == 2 and files_seen == 2
    silver_trips = con.execute("SELECT sum(viajes) FROM silver_od_hourly").fetchone()[0]
    assert silver_trips == sum(f.viajes for f in files)
    con.close()
    assert not list((tmp_path / "tmp").iterdir())  # spill directories are removed


def test_reloading_a_day_replaces_it_and_a_killed_load_leaves_the_old_state(tmp_path):
    database = tmp_path / "od.duckdb"
    old = samples.write_day(tmp_path / "old", "municipios", DAY, 3_000, seed=1)
    new = samples.write_day(tmp_path / "new", "municipios", DAY, 300_000, seed=2)
    old_staged = _stage(tmp_path / "s1", old, tmp_path / "old")
    new_staged = _stage(tmp_path / "s2", new, tmp_path / "new")
    _load(database, old_staged)
    again = _load(database, old_staged)
    assert again["replaced"] == old.rows
    assert bronze.day_totals(str(database), "municipios") == {DAY: (old.rows, old.viajes)}

    # Killed with the new rows written but not committed: the old day stays. Killed just
    # after the commit: the new day is there, whole.
    for moment, expected in (("before", (old.rows, old.viajes)), ("after", (new.rows, new.viajes))):
        _kill_load_at_commit(tmp_path / moment, database, new_staged["staging"], moment)
        assert bronze.day_totals(str(database), "municipios") == {DAY: expected}, moment


# Runs load_day in a child whose DuckDB connection stops at the day's COMMIT (just before or
# just after it), says so in a file and waits there to be killed.
_LOAD_PAUSED_AT_COMMIT = """
import pathlib, sys, time
import flows.mitma_od.bronze as duckdb_io
from flows.mitma_od.bronze import load_day

database, staging, day, moment, marker = sys.argv[1:6]
connect = duckdb_io._connect


class PausedAtCommit:
    def __init__(self, con):
        self._con = con

    def __getattr__(self, name):
        return getattr(self._con, name)

    def execute(self, sql, *args):
        if sql != "COMMIT":
            return self._con.execute(sql, *args)
        result = self._con.execute(sql, *args) if moment == "after" else None
        pathlib.Path(marker).write_text(moment)
        time.sleep(600)
        return result


duckdb_io._connect = lambda *args, **kwargs: PausedAtCommit(connect(*args, **kwargs))
load_day(database, staging, day, "municipios", "new.csv.gz")
"""


def _kill_load_at_commit(workdir: Path, database: Path, staging: str, moment: str) -> None:
    workdir.mkdir()
    marker = workdir / "paused"
    argv = [sys.executable, "-c", _LOAD_PAUSED_AT_COMMIT, str(database), staging]
    child = subprocess.Popen([*argv, DAY.isoformat(), moment, str(marker)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, f"the load ended before its commit ({moment})"
            assert time.monotonic() < deadline, "the load never reached its commit"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_wrong_header_corrupt_gzip_and_foreign_days_fail_naming_the_file(tmp_path):
    mirror = tmp_path / "mirror"
    wrong = samples.write_day(mirror, "GAU", DAY, 2_000, kind="wrong_header")
    corrupt = samples.write_day(mirror, "GAU", DAY + timedelta(days=1), 50_000, kind="corrupt_gzip")
    good = samples.write_day(mirror, "GAU", DAY + timedelta(days=2), 2_000)

    with pytest.raises(BadInput, match=r"20220501_Viajes_GAU\.csv\.gz: line 1: header.*sexo"):
        _stage(tmp_path, wrong, mirror)
    with pytest.raises(BadInput, match=r"20220502_Viajes_GAU\.csv\.gz: corrupt gzip"):
        _stage(tmp_path, corrupt, mirror)
    with pytest.raises(BadInput, match=r"20220503_Viajes_GAU\.csv\.gz: 2,000 rows are not dated"):
        _stage(tmp_path, good, mirror, day=DAY.isoformat())
    # Nothing half-written stays behind under a final or temporary name.
    assert not list((tmp_path / "staging").iterdir())


def test_too_many_bad_rows_fail_the_file(tmp_path):
    sample = samples.write_day(tmp_path / "m", "GAU", DAY, 2_000, bad_rows=150)
    with pytest.raises(BadInput, match="150 of 2,150 rows do not parse"):
        _stage(tmp_path, sample, tmp_path / "m")


def test_staging_fits_a_small_cap_in_a_guarded_child(tmp_path):
    sample = samples.write_day(tmp_path / "m", "distritos", DAY, 400_000, seed=9)
    stem = sample.name.removesuffix(".csv.gz")
    result = run_guarded_measured(
        "flows.mitma_od.bronze:stage_day",
        str(tmp_path / "m" / sample.relpath),
        str(tmp_path / f"{stem}.parquet"),
        str(tmp_path / f"{stem}.rejects.csv"),
        DAY.isoformat(),
        "distritos",
        sample.name,
        cap_mb=200,
        rows_per_group=16_384,
        temp_root=str(tmp_path / "tmp"),
    )
    assert result.value["rows"] == sample.rows
    assert result.peak_mb < 200


def test_discovery_from_rss_url_pattern_and_directory_reports_gaps(tmp_path, http_server):
    mirror = tmp_path / "site"
    gap = DAY + timedelta(days=1)
    files = samples.write_samples(
        mirror, DAY, 3, zone_types=["distritos", "GAU"], rows_per_day=500, gaps=[gap]
    )
    base = http_server(mirror)
    samples.write_rss(mirror, base, files)
    days = [DAY + timedelta(days=i) for i in range(3)]
    expected = [DAY, DAY + timedelta(days=2)]

    for source in (f"{base}/RSS.xml", base, str(mirror), str(mirror / "RSS.xml")):
        found = discover.discover(source, "GAU", days)
        assert [f.day for f in found.files] == expected, source
        assert found.gaps == [gap]
        assert all(
            f.zone_type == "GAU" and f.name.endswith("_Viajes_GAU.csv.gz") for f in found.files
        )
    rss = discover.discover(f"{base}/RSS.xml", "GAU", days)
    first_gau = next(f for f in files if f.zone_type == "GAU")
    assert rss.files[0].location == f"{base}/{first_gau.relpath}"
    assert discover.discover(str(mirror), "GAU", days).files[0].is_local


def test_download_streams_renames_and_skips_complete_copies(tmp_path, http_server):
    mirror = tmp_path / "site"
    sample = samples.write_day(mirror, "municipios", DAY, 20_000)
    base = http_server(mirror)
    destination = tmp_path / "cache" / "raw" / sample.relpath
    first = download.download_file(f"{base}/{sample.relpath}", str(destination))
    assert not first["skipped"]
    assert destination.read_bytes() == (mirror / sample.relpath).read_bytes()
    assert download.download_file(f"{base}/{sample.relpath}", str(destination))["skipped"]
    destination.write_bytes(b"partial")  # a different size is downloaded again
    assert not download.download_file(f"{base}/{sample.relpath}", str(destination))["skipped"]
    assert destination.stat().st_size == (mirror / sample.relpath).stat().st_size
    assert [p.name for p in destination.parent.iterdir()] == [destination.name]

    with pytest.raises(BadInput, match="HTTP 404"):
        download.download_file(f"{base}/nothing-here.csv.gz", str(tmp_path / "x.csv.gz"))
    with pytest.raises(BadInput, match="not an http"):
        download.download_file("file:///etc/passwd", str(tmp_path / "y"))


def test_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    raw = tmp_path / "raw" / "2022-05"
    raw.mkdir(parents=True)
    stale = raw / f".tmp-{dead_pid}-abcd1234-20220501_Viajes_GAU.csv.gz"
    live = raw / f".tmp-{os.getpid()}-abcd1234-20220502_Viajes_GAU.csv.gz"
    spill = tmp_path / "tmp" / f"duckdb-{dead_pid}-abcd1234"
    spill.mkdir(parents=True)
    (spill / "x.block").write_bytes(b"0")
    for path in (stale, live):
        path.write_bytes(b"half")
    removed = cleanup.remove_stale_temporaries(tmp_path / "raw", tmp_path / "tmp")
    assert sorted(removed) == sorted([str(stale), str(spill)])
    assert live.exists() and not stale.exists() and not spill.exists()


def test_cleanup_honours_raw_retention_and_never_touches_a_mirror(tmp_path):
    raw_root = tmp_path / "raw"
    old, recent = raw_root / "a" / "old.csv.gz", raw_root / "b" / "recent.csv.gz"
    mirror_file = tmp_path / "mirror" / "m.csv.gz"
    staging = tmp_path / "staging" / "s.parquet"
    for path in (old, recent, mirror_file, staging):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    now = time.time()
    os.utime(old, (now - 10 * 86400, now - 10 * 86400))
    kept = cleanup.cleanup_after_load([str(staging)], [str(recent)], str(raw_root), 7, now=now)
    assert kept == {"staging_removed": 1, "raw_removed": 1}
    assert recent.exists() and not old.exists() and not staging.exists()
    dropped = cleanup.cleanup_after_load([], [str(recent), str(mirror_file)], str(raw_root), 0)
    assert dropped["raw_removed"] == 1 and not recent.exists() and mirror_file.exists()


def test_parameters_fail_before_any_work_naming_the_parameter():
    with pytest.raises(ValidationError, match="end_date"):
        MitmaParams(start_date=date(2022, 5, 3), end_date=date(2022, 5, 1))
    with pytest.raises(ValidationError, match="zone_type"):
        MitmaParams(zone_type="provincias")
    with pytest.raises(ValidationError, match="source"):
        MitmaParams(source="ftp://example.org/x")
    with pytest.raises(ValidationError, match="max_workers"):
        MitmaParams(max_workers=0)
    params = MitmaParams(end_date=date(2022, 5, 10), lookback_days=3)
    assert params.days(today=date(2022, 5, 11))[0] == date(2022, 5, 8)


def test_sql_identifiers_are_checked():
    assert schema.identifier("bronze_viajes") == '"bronze_viajes"'
    for bad in ('x"; DROP TABLE t; --', "1abc", "a b", ""):
        with pytest.raises(BadInput):
            schema.identifier(bad)


def test_values_outside_a_published_domain_are_rejects_and_bronze_keeps_the_domain(tmp_path):
    good = "20220501|08|0105902|0105903|2-10|casa|trabajo_estudio|no|si|01|10-15|25-45|mujer|1.5|6"
    fields = good.split("|")
    outside = {4: "5-10", 5: "ocio", 11: "18-25", 12: "otro"}  # distancia, actividad, edad, sexo
    lines = ["|".join(schema.COLUMNS), good]
    for index, value in outside.items():
        lines.append("|".join([*fields[:index], value, *fields[index + 1 :]]))
    lines.append(good.replace("|01|10-15|25-45|mujer|", "|NA|NA|NA|NA|"))
    raw = tmp_path / discover.daily_name("distritos", DAY)
    raw.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    staged = bronze.stage_day(
        str(raw),
        str(tmp_path / "staging.parquet"),
        str(tmp_path / "rejects.csv"),
        DAY.isoformat(),
        "distritos",
        raw.name,
    )

    assert (staged["rows"], staged["rejected"]) == (2, 4)
    with open(staged["rejects"], newline="") as handle:
        rejects = list(csv.DictReader(handle))
    assert [int(r["line"]) for r in rejects] == [3, 4, 5, 6]
    database = tmp_path / "od.duckdb"
    _load(database, staged)
    con = duckdb.connect(str(database), read_only=True)
    rows = con.execute(
        "SELECT distancia, sexo, typeof(sexo), renta, typeof(zone_type) FROM bronze_viajes "
        "ORDER BY sexo NULLS LAST"
    ).fetchall()
    # Queried as text: equality, LIKE and a value outside the domain (no match, no error).
    matches = con.execute(
        "SELECT count(*) FILTER (sexo = 'mujer'), count(*) FILTER (edad LIKE '25%'), "
        "count(*) FILTER (sexo = 'otro'), count(*) FILTER (zone_type = 'distritos') "
        "FROM bronze_viajes"
    ).fetchone()
    con.close()
    sexo = "ENUM('hombre', 'mujer')"
    zones = "ENUM('distritos', 'municipios', 'GAU')"
    assert rows == [("2-10", "mujer", sexo, "10-15", zones), ("2-10", None, sexo, None, zones)]
    assert matches == (1, 1, 0, 2)


def test_a_bronze_table_with_text_columns_from_an_earlier_version_keeps_loading(tmp_path):
    mirror = tmp_path / "mirror"
    sample = samples.write_day(mirror, "distritos", DAY, 50, seed=2)
    database = tmp_path / "od.duckdb"
    con = duckdb.connect(str(database))
    text_types = {
        c: "VARCHAR" if t.startswith("ENUM") else t for c, t in schema.BRONZE_TYPES.items()
    }
    columns = ", ".join(f"{c} {t}" for c, t in text_types.items())
    con.execute(f"CREATE TABLE bronze_viajes ({columns})")
    con.close()
    staged = _stage(tmp_path, sample, mirror)
    _load(database, staged)
    _load(database, staged)  # a re-run replaces the day
    con = duckdb.connect(str(database), read_only=True)
    count, kinds = con.execute(
        "SELECT count(*), list(DISTINCT typeof(sexo)) FROM bronze_viajes"
    ).fetchone()
    con.close()
    assert (count, kinds) == (50, ["VARCHAR"])


@pytest.mark.parametrize("path", ["/RSS.xml", "/"])
def test_a_source_that_does_not_answer_names_host_and_parameter(path, tmp_path):
    from deployments.ports import free_port

    port = free_port()  # nothing listens there: the RSS feed, then the URL pattern
    with pytest.raises(download.TransientDownloadError) as caught:
        discover.discover(f"http://127.0.0.1:{port}{path}", "distritos", [DAY], timeout_s=5)
    message = str(caught.value)
    assert message.startswith(f"parameter source: cannot reach 127.0.0.1:{port} ("), message
    assert isinstance(caught.value, ConnectionError)  # retried as transient by the flow
    with pytest.raises(download.TransientDownloadError, match=rf"^parameter source: .*:{port} \("):
        download.download_file(f"http://127.0.0.1:{port}/f.csv.gz", str(tmp_path / "f.csv.gz"))
