"""The DuckDB side of the MITMA OD ingest: stage one day's CSV, load staged days into bronze.

Runs in guarded children, so it imports only DuckDB, the schema and headroom's light modules
(no pydantic models, no HTTP). DuckDB is imported here, not in each function: the module's
fork server (headroom.zygote) then holds it, and no child pays its 0.15 CPU-s import again.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from flows.mitma_od_schema import (
    BRONZE_TABLE,
    BRONZE_TYPES,
    COLUMNS,
    CSV_TYPES,
    LOADS_TABLE,
    SILVER_VIEW,
    STAGE_EXPRESSIONS,
    check_zone_type,
    identifier,
    published,
)
from headroom.budget import usable_cores
from headroom.errors import BadInput
from headroom.units import duckdb_limit

log = logging.getLogger(__name__)


def check_header(path: str, name: str | None = None) -> None:
    """Raise BadInput naming the file when it is not gzip or its header is not the schema's."""
    name = name or Path(path).name
    try:
        with gzip.open(path, "rb") as handle:
            first = handle.readline(64 * 1024)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise BadInput(f"{name}: not a readable gzip file ({exc})") from None
    text = first.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    got = tuple(text.split("|"))
    if got != COLUMNS:
        missing = [c for c in COLUMNS if c not in got]
        extra = [c for c in got if c not in COLUMNS]
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing)}")
        if extra:
            detail.append(f"unexpected {', '.join(repr(c) for c in extra[:5])}")
        if not missing and not extra:
            detail.append("columns out of order")
        raise BadInput(
            f"{name}: line 1: header does not match the MITMA v2 OD schema "
            f"({len(got)} columns, expected {len(COLUMNS)}: {'; '.join(detail)})"
        )


# Cap per DuckDB thread. Staging tasks run many at once (the memory admission fills the
# budget), so days already keep every core busy and a second thread per day only adds the
# parallel CSV reader's overhead (about a fifth more CPU per row); the lone writer may use more.
STAGE_MIB_PER_THREAD = 1024
WRITER_MIB_PER_THREAD = 128


def duckdb_settings(
    cap_mb: float, temp_dir: str | None, mib_per_thread: float = WRITER_MIB_PER_THREAD
) -> dict[str, Any]:
    """memory_limit, threads and temp directory for a DuckDB connection under ``cap_mb``.

    DuckDB's memory_limit covers its buffer manager only; the Python process, the gzip
    reader and the Parquet writer's buffers sit outside it, so it gets half the cap.
    """
    threads = max(1, min(usable_cores(), int(cap_mb // mib_per_thread)))
    settings: dict[str, Any] = {
        "memory_limit": duckdb_limit(max(32.0, cap_mb * 0.5)),
        "threads": threads,
        "preserve_insertion_order": False,
    }
    if temp_dir:
        settings["temp_directory"] = temp_dir
    return settings


def csv_buffer_bytes(cap_mb: float) -> int:
    """DuckDB's CSV read buffer for a cap: its default (16 MiB, several held at once) alone
    overflows a small cap; never below DuckDB's 2 MiB longest line."""
    return int(min(16.0, max(2.0, cap_mb / 32)) * (1 << 20))


def _connect(
    database: str,
    cap_mb: float,
    temp_dir: str | None,
    mib_per_thread: float = WRITER_MIB_PER_THREAD,
):
    return duckdb.connect(database, config=duckdb_settings(cap_mb, temp_dir, mib_per_thread))


@contextlib.contextmanager
def _scratch_dir(temp_root: str | None) -> Iterator[str | None]:
    """A private DuckDB spill directory, removed afterwards (named for the owning process)."""
    if not temp_root:
        yield None
        return
    path = Path(temp_root) / f"duckdb-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield str(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stage_day(
    raw_path: str,
    staging_path: str,
    rejects_path: str,
    day: str,
    zone_type: str,
    source_file: str,
    cap_mb: float = 300.0,
    rows_per_group: int = 122_880,
    temp_root: str | None = None,
    max_reject_fraction: float = 0.01,
) -> dict[str, Any]:
    """Parse one day's gzip CSV with DuckDB into a typed Parquet staging file.

    Rows that do not parse go to ``rejects_path`` (file name, line, column, error, text).
    A wrong header, a corrupt gzip, rows of another day or too many rejects: BadInput.
    """
    check_zone_type(zone_type)
    the_day = date.fromisoformat(day)
    check_header(raw_path, source_file)
    final = Path(staging_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    select = ", ".join(STAGE_EXPRESSIONS.get(c, c) for c in COLUMNS)
    try:
        with _scratch_dir(temp_root) as scratch, published(final) as temporary:
            con = _connect(":memory:", cap_mb, scratch, STAGE_MIB_PER_THREAD)
            try:
                copied = con.execute(
                    f"""COPY (
                        SELECT {select}
                        FROM read_csv($path, delim='|', header=true, auto_detect=false,
                                      columns=$columns, nullstr='NA', dateformat='%Y%m%d',
                                      compression='gzip', buffer_size=$buffer_bytes,
                                      store_rejects=true,
                                      rejects_table='rejects', rejects_scan='rejects_scan',
                                      rejects_limit=100000)
                    ) TO $out (FORMAT parquet, ROW_GROUP_SIZE $rows_per_group,
                               COMPRESSION lz4_raw, PARQUET_VERSION v2)""",
                    {
                        "path": raw_path,
                        "columns": CSV_TYPES,
                        "out": str(temporary),
                        "rows_per_group": int(rows_per_group),
                        "buffer_bytes": csv_buffer_bytes(cap_mb),
                    },
                ).fetchone()
                rows = int(copied[0]) if copied else 0
                rejected, wrong_days = _check_staged(con, str(temporary), the_day)
                if wrong_days:
                    raise BadInput(f"{source_file}: {wrong_days:,} rows are not dated {day}")
                if rejected:
                    _write_rejects(con, source_file, Path(rejects_path))
                    log.warning("%s: %d rows rejected, see %s", source_file, rejected, rejects_path)
                if rejected > max(100, max_reject_fraction * (rows + rejected)):
                    raise BadInput(
                        f"{source_file}: {rejected:,} of {rows + rejected:,} rows do not parse "
                        f"(more than {max_reject_fraction:.0%}); see {rejects_path}"
                    )
            finally:
                con.close()
    except duckdb.Error as exc:
        if isinstance(exc, duckdb.OutOfMemoryException):
            raise
        text = str(exc).splitlines()[0]
        if "gzip" in text.lower() or "compress" in text.lower():
            raise BadInput(f"{source_file}: corrupt gzip data ({text})") from None
        if isinstance(exc, duckdb.InvalidInputException | duckdb.ConversionException):
            raise BadInput(f"{source_file}: {text}") from None
        raise
    return {
        "day": day,
        "zone_type": zone_type,
        "source_file": source_file,
        "staging": str(final),
        "rows": rows,
        "rejected": rejected,
        "rejects": rejects_path if rejected else None,
        "seconds": round(time.monotonic() - started, 3),
    }


def _check_staged(con: Any, parquet: str, day: date) -> tuple[int, int]:
    """(rejected rows, staged rows dated another day)."""
    rejected = con.execute("SELECT count(*) FROM rejects").fetchone()[0]
    wrong = con.execute(
        "SELECT count(*) FROM read_parquet($p) WHERE fecha IS DISTINCT FROM $day",
        {"p": parquet, "day": day},
    ).fetchone()[0]
    return int(rejected), int(wrong)


def _write_rejects(con: Any, source_file: str, rejects: Path) -> None:
    rejects.parent.mkdir(parents=True, exist_ok=True)
    with published(rejects) as temporary:
        con.execute(
            """COPY (SELECT $file AS file, line, column_name AS "column", error_type,
                            error_message, csv_line
                     FROM rejects ORDER BY line) TO $out (HEADER, DELIMITER ',')""",
            {"file": source_file, "out": str(temporary)},
        )


# ---------------------------------------------------------------------------------------------
# Loading


def ensure_schema(con: Any) -> None:
    """Create the bronze table, the load log and the silver hourly OD view if missing."""
    columns = ", ".join(f"{identifier(c)} {t}" for c, t in BRONZE_TYPES.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS {identifier(BRONZE_TABLE)} ({columns})")
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {identifier(LOADS_TABLE)} (
            fecha DATE, zone_type VARCHAR, source_file VARCHAR, rows BIGINT,
            rejected BIGINT, loaded_at TIMESTAMP)"""
    )
    con.execute(
        f"""CREATE VIEW IF NOT EXISTS {identifier(SILVER_VIEW)} AS
            SELECT zone_type, fecha, periodo AS hora, origen, destino,
                   sum(viajes) AS viajes, sum(viajes_km) AS viajes_km
            FROM {identifier(BRONZE_TABLE)}
            GROUP BY zone_type, fecha, periodo, origen, destino"""
    )


def load_day(
    database: str,
    staging_path: str,
    day: str,
    zone_type: str,
    source_file: str,
    rejected: int = 0,
    cap_mb: float = 500.0,
    temp_root: str | None = None,
) -> dict[str, Any]:
    """Replace one day and zone type in the bronze table with a staged file, in one transaction.

    A kill at any moment leaves either the previous rows of that day or the new ones.
    """
    item = {
        "staging": staging_path,
        "day": day,
        "zone_type": zone_type,
        "source_file": source_file,
        "rejected": rejected,
    }
    result = load_days(database, [item], cap_mb=cap_mb, temp_root=temp_root)
    if result["failed"]:
        raise BadInput(result["failed"][0]["error"])
    return result["loaded"][0]


def load_days(
    database: str,
    staged: list[dict[str, Any]],
    cap_mb: float = 500.0,
    temp_root: str | None = None,
) -> dict[str, Any]:
    """Load staged days (``stage_day`` results) in date order, one transaction per day.

    Returns ``{"loaded": [...], "failed": [{"source_file", "error"}]}``: a day that cannot be
    loaded is rolled back and reported, the others go on. Out of memory is raised (retryable).
    """
    Path(database).resolve().parent.mkdir(parents=True, exist_ok=True)
    loaded: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    with _scratch_dir(temp_root) as scratch:
        con = _connect(database, cap_mb, scratch)
        try:
            ensure_schema(con)
            for item in sorted(staged, key=lambda i: (i["day"], i["source_file"])):
                try:
                    loaded.append(_replace_day(con, item))
                except duckdb.OutOfMemoryException:
                    raise
                except (BadInput, duckdb.Error) as exc:
                    failed.append({"source_file": item["source_file"], "error": str(exc)})
                    log.error("%s: not loaded: %s", item["source_file"], exc)
            con.execute("CHECKPOINT")
        finally:
            con.close()
    return {"loaded": loaded, "failed": failed}


def _replace_day(con: Any, item: dict[str, Any]) -> dict[str, Any]:
    """Delete one day and zone type and insert its staged rows, in one transaction."""
    zone_type, source_file = item["zone_type"], item["source_file"]
    check_zone_type(zone_type)
    the_day = date.fromisoformat(item["day"])
    if not Path(item["staging"]).is_file():
        raise BadInput(f"{source_file}: staging file {item['staging']} does not exist")
    started = time.monotonic()
    bronze, loads = identifier(BRONZE_TABLE), identifier(LOADS_TABLE)
    columns = ", ".join(identifier(c) for c in BRONZE_TYPES)
    staged = ", ".join(identifier(c) for c in COLUMNS)
    key = {"day": the_day, "zone": zone_type}
    con.execute("BEGIN TRANSACTION")
    try:
        deleted = con.execute(
            f"DELETE FROM {bronze} WHERE fecha = $day AND zone_type = $zone", key
        ).fetchone()[0]
        inserted = con.execute(
            f"""INSERT INTO {bronze} ({columns})
                SELECT {staged}, $zone AS zone_type, $file AS source_file
                FROM read_parquet($path)""",
            {"path": item["staging"], "zone": zone_type, "file": source_file},
        ).fetchone()[0]
        con.execute(f"DELETE FROM {loads} WHERE fecha = $day AND zone_type = $zone", key)
        con.execute(
            f"INSERT INTO {loads} VALUES ($day, $zone, $file, $rows, $rejected, now()::TIMESTAMP)",
            {**key, "file": source_file, "rows": inserted, "rejected": item.get("rejected", 0)},
        )
        con.execute("COMMIT")
    except BaseException as exc:
        con.execute("ROLLBACK")
        if isinstance(exc, duckdb.Error) and not isinstance(exc, duckdb.OutOfMemoryException):
            raise BadInput(f"{source_file}: {str(exc).splitlines()[0]}") from None
        raise
    return {
        "day": item["day"],
        "zone_type": zone_type,
        "source_file": source_file,
        "rows": int(inserted),
        "replaced": int(deleted),
        "seconds": round(time.monotonic() - started, 3),
    }


def loaded_days(database: str, zone_type: str) -> set[date]:
    """Days already loaded for a zone type (empty when the database does not exist yet)."""
    check_zone_type(zone_type)
    if not Path(database).is_file():
        return set()
    con = duckdb.connect(database, read_only=True)
    try:
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = $t",
            {"t": LOADS_TABLE},
        ).fetchone()[0]
        if not exists:
            return set()
        rows = con.execute(
            f"SELECT fecha FROM {identifier(LOADS_TABLE)} WHERE zone_type = $zone",
            {"zone": zone_type},
        ).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def day_totals(database: str, zone_type: str) -> dict[date, tuple[int, Any]]:
    """{day: (rows, sum of viajes)} of the bronze table for one zone type."""
    check_zone_type(zone_type)
    con = duckdb.connect(database, read_only=True)
    try:
        rows = con.execute(
            f"""SELECT fecha, count(*), sum(viajes) FROM {identifier(BRONZE_TABLE)}
                WHERE zone_type = $zone GROUP BY fecha ORDER BY fecha""",
            {"zone": zone_type},
        ).fetchall()
    finally:
        con.close()
    return {r[0]: (int(r[1]), r[2]) for r in rows}
