"""The ingest_mitma_od flow end to end on a temporary Prefect server, files over real HTTP.

One site holds three good days of each zone type, a day past them with no file (a gap) and,
for municipios, a corrupt gzip and a wrong-header file on two further days. Flow runs are
slow to start on this server, so one test walks through every claim in four runs.
"""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
import pytest

from flows.mitma_od import bronze, discover, samples, schema
from flows.mitma_od.flow import ingest_mitma_od
from headroom import parse_size
from headroom.budget import usable_cores
from headroom.prefect.report import load_attempts

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

START = date(2023, 1, 9)
DAYS = 3
TIGHT_BUDGET = "350MB"


def _bronze_rows(database: str) -> int:
    con = duckdb.connect(database, read_only=True)
    try:
        return con.execute("SELECT count(*) FROM bronze_viajes").fetchone()[0]
    finally:
        con.close()


def _most_at_once(attempts: list) -> int:
    edges = sorted(
        [(a.started, 1) for a in attempts] + [(a.started + a.seconds, -1) for a in attempts]
    )
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_ingest_over_http_exact_idempotent_bad_files_alone_tight_budget(
    tmp_path, http_server, monkeypatch
):
    root = tmp_path / "site"
    corrupt, wrong = START + timedelta(days=DAYS + 1), START + timedelta(days=DAYS + 2)
    files = samples.write_samples(
        root, START, DAYS, zone_types=["distritos", "municipios"], rows_per_day=12_000, seed=11
    )
    # GAU runs under a tight budget, so its days are bigger.
    files += samples.write_samples(root, START, DAYS, zone_types=["GAU"], rows_per_day=120_000)
    for day, kind in ((corrupt, "corrupt_gzip"), (wrong, "wrong_header")):
        files.append(samples.write_day(root, "municipios", day, 30_000, kind=kind))
    base = http_server(root)
    samples.write_rss(root, base, files)
    database = str(tmp_path / "od.duckdb")
    gap = START + timedelta(days=DAYS)
    common = {"start_date": START, "database": database, "cache_dir": str(tmp_path / "cache")}

    # distritos from the RSS feed, keeping the raw cache for the re-run.
    summary = ingest_mitma_od(
        end_date=gap,
        zone_type="distritos",
        source=f"{base}/RSS.xml",
        raw_retention_days=7,
        **common,
    )
    assert bronze.day_totals(database, "distritos") == samples.expected_totals(files, "distritos")
    assert summary["gaps"] == [gap.isoformat()]
    assert summary["rows"] == sum(f.rows for f in files if f.zone_type == "distritos")
    assert not list((tmp_path / "cache" / "staging").glob("*.parquet"))  # cleaned after load

    # municipios from the URL pattern: the two bad files fail alone, naming file and reason.
    state = ingest_mitma_od(
        end_date=wrong, zone_type="municipios", source=base, return_state=True, **common
    )
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "2 MITMA daily files failed" in message
    assert f"{discover.daily_name('municipios', corrupt)}: BadInput: " in message
    assert "corrupt gzip" in message
    assert f"{discover.daily_name('municipios', wrong)}: BadInput: " in message
    assert "header does not match" in message
    municipios = bronze.day_totals(database, "municipios")
    assert municipios == samples.expected_totals(files, "municipios")
    assert sorted(municipios) == [START + timedelta(days=i) for i in range(DAYS)]

    # GAU under a budget of a few hundred MB: every cap shrinks below it, and it completes.
    monkeypatch.setenv("HEADROOM_MEMORY_LIMIT", TIGHT_BUDGET)
    state = ingest_mitma_od(
        end_date=gap, zone_type="GAU", source=f"{base}/RSS.xml", return_state=True, **common
    )
    monkeypatch.delenv("HEADROOM_MEMORY_LIMIT")
    assert state.is_completed(), state.message
    assert bronze.day_totals(database, "GAU") == samples.expected_totals(files, "GAU")
    attempts = load_attempts(str(state.state_details.flow_run_id))
    heavy = [a for a in attempts if a.task in ("stage-mitma-day", "load-mitma-days")]
    assert len(heavy) >= DAYS + 1
    budget_mb = parse_size(TIGHT_BUDGET) / (1 << 20)
    assert all(a.cap_mb < budget_mb and a.peak_mb <= a.cap_mb for a in heavy)
    # A staging day is one DuckDB thread that never waits: no more days at once than cores.
    staging = [a for a in attempts if a.task == "stage-mitma-day"]
    assert 1 <= _most_at_once(staging) <= usable_cores()

    # Re-running distritos changes nothing: same rows, same sums, raw files not fetched again.
    total = _bronze_rows(database)
    assert total == sum(f.rows for f in files if f.loadable)
    again = ingest_mitma_od(
        end_date=gap,
        zone_type="distritos",
        source=f"{base}/RSS.xml",
        raw_retention_days=7,
        **common,
    )
    assert again["skipped_downloads"] == DAYS
    assert _bronze_rows(database) == total
    for zone_type in schema.ZONE_TYPES:
        assert bronze.day_totals(database, zone_type) == samples.expected_totals(files, zone_type)
    con = duckdb.connect(database, read_only=True)
    silver = dict(
        con.execute("SELECT zone_type, sum(viajes) FROM silver_od_hourly GROUP BY ALL").fetchall()
    )
    con.close()
    assert silver == {
        z: sum(f.viajes for f in files if f.zone_type == z and f.loadable)
        for z in schema.ZONE_TYPES
    }

    # missing_only: every GAU day is loaded already, so nothing is discovered or staged.
    nothing = ingest_mitma_od(
        end_date=gap, zone_type="GAU", source=f"{base}/RSS.xml", missing_only=True, **common
    )
    assert nothing["days"] == 1 and nothing["files"] == 0 and nothing["rows"] == 0
