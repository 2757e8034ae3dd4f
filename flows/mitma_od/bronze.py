"""The DuckDB side of the MITMA OD ingest: stage one day's CSV, load staged days into bronze.

Runs in guarded children, so it imports only DuckDB, the schema and headroom's light modules
(no pydantic models, no HTTP). DuckDB is imported here, not in each function: the module's
fork server (headroom.isolation.forkserver) then holds it, and no child pays its import again.
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

from flows.mitma_od.schema import (
    BRONZE_TABLE,
    BRONZE_TYPES,
    COLUMNS,
    CSV_TYPES,
    LOADS_TABLE,
    SILVER_VIEW,
    STAGE_EXPRESSIONS,
    check_zone_type,
    identifier,
)
from headroom.budget import usable_cores
from headroom.errors import BadInput, OutputUnavailable, output_fault
from headroom.storage import publishing
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
    if not text.strip():
        size = Path(path).stat().st_size
        raise BadInput(f"{name}: empty file ({size:,} bytes: no header, no rows)")
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


# DuckDB's reject table holds a record per bad column of a bad line; past this many records it
# stops recording (the lines are still skipped) and the rejected lines are counted instead.
REJECTS_LIMIT = 100_000


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

    Rows that do not parse, and rows dated another day, are rejects: one line each in
    ``rejects_path`` (file name, line, columns, errors, text). An empty file, a wrong header, a
    corrupt gzip or more rejected rows than ``max_reject_fraction`` (at least 100): BadInput.
    A full, read-only or forbidden staging directory: OutputUnavailable.
    """
    check_zone_type(zone_type)
    the_day = date.fromisoformat(day)
    check_header(raw_path, source_file)
    final = Path(staging_path)
    started = time.monotonic()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with _scratch_dir(temp_root) as scratch, publishing(final) as temporary:
            con = _connect(":memory:", cap_mb, scratch, STAGE_MIB_PER_THREAD)
            try:
                rows = _copy_day(con, raw_path, str(temporary), the_day, cap_mb, rows_per_group)
                rejected, wrong_days = _check_staged(con, raw_path, rows)
                if rejected:
                    _write_rejects(con, source_file, Path(rejects_path), the_day)
                    log.warning("%s: %d rows rejected, see %s", source_file, rejected, rejects_path)
                counts = (rows, rejected, wrong_days)
                _refuse_too_many(source_file, day, counts, max_reject_fraction, rejects_path)
            finally:
                con.close()
    except (duckdb.Error, OSError) as exc:
        raise _staging_error(exc, raw_path, source_file, final) from None
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


def _refuse_too_many(
    source_file: str, day: str, counts: tuple[int, int, int], fraction: float, rejects: str
) -> None:
    """BadInput when more rows are rejected than ``fraction`` of them (at least 100), or all;
    ``counts``: rows staged, rows rejected, of which dated another day."""
    rows, rejected, wrong_days = counts
    total = rows + rejected
    if rejected > max(100, fraction * total) or (rejected and not rows):
        why = f"{wrong_days:,} rows are not dated {day}; " if wrong_days else ""
        raise BadInput(
            f"{source_file}: {why}{rejected:,} of {total:,} rows do not parse "
            f"(more than {fraction:.0%}); see {rejects}"
        )


def _copy_day(
    con: Any, raw_path: str, out: str, day: date, cap_mb: float, rows_per_group: int
) -> int:
    """Parse the CSV into Parquet at ``out``; returns the rows written (rejects excluded).

    ``fecha`` is read as an ENUM of the one day the file holds: a row of any other day (or
    none) is then a reject with its line number, like any value outside its domain. The
    select must read the column (a constant alone would let DuckDB skip parsing it).
    """
    columns = {**CSV_TYPES, "fecha": f"ENUM('{day:%Y%m%d}')"}  # digits of a date: no quoting
    select = ", ".join(
        "CASE WHEN fecha IS NOT NULL THEN CAST($day AS DATE) END AS fecha"
        if c == "fecha"
        else STAGE_EXPRESSIONS.get(c, c)
        for c in COLUMNS
    )
    copied = con.execute(
        f"""COPY (
            SELECT {select}
            FROM read_csv($path, delim='|', header=true, auto_detect=false,
                          columns=$columns, nullstr='NA', force_not_null=['fecha'],
                          compression='gzip', buffer_size=$buffer_bytes,
                          store_rejects=true,
                          rejects_table='rejects', rejects_scan='rejects_scan',
                          rejects_limit=$rejects_limit)
        ) TO $out (FORMAT parquet, ROW_GROUP_SIZE $rows_per_group,
                   COMPRESSION lz4_raw, PARQUET_VERSION v2)""",
        {
            "path": raw_path,
            "columns": columns,
            "day": day,
            "out": out,
            "rows_per_group": int(rows_per_group),
            "buffer_bytes": csv_buffer_bytes(cap_mb),
            "rejects_limit": REJECTS_LIMIT,
        },
    ).fetchone()
    return int(copied[0]) if copied else 0


def _staging_error(exc: BaseException, raw_path: str, source_file: str, final: Path) -> Exception:
    """The error a failed staging reports: the output's fault, the file's, or DuckDB's own."""
    if isinstance(exc, duckdb.OutOfMemoryException | OutputUnavailable):
        return exc
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    # A permission error reading the raw file is that file's problem, not the output's.
    fault = None if raw_path in str(exc) else output_fault(exc, str(final.parent))
    if fault is not None:
        return fault
    if isinstance(exc, duckdb.Error):
        if "gzip" in text.lower() or "compress" in text.lower():
            return BadInput(f"{source_file}: corrupt gzip data ({text})")
        if isinstance(exc, duckdb.InvalidInputException | duckdb.ConversionException):
            return BadInput(f"{source_file}: {text}")
    return exc  # type: ignore[return-value]


def _check_staged(con: Any, raw_path: str, rows: int) -> tuple[int, int]:
    """(rejected rows, of which dated another day): distinct lines, not bad columns."""
    records, rejected, wrong = con.execute(
        """SELECT count(*), count(DISTINCT line),
                  count(DISTINCT line) FILTER (WHERE column_name = 'fecha')
           FROM rejects"""
    ).fetchone()
    if records >= REJECTS_LIMIT:  # not every bad line was recorded: count them in the file
        rejected = max(rejected, _data_lines(raw_path) - rows)
    return int(rejected), int(wrong)


def _data_lines(path: str) -> int:
    """Non-empty lines after the header of a gzip text file."""
    lines = 0
    with gzip.open(path, "rb") as handle:
        handle.readline()
        for line in handle:
            lines += bool(line.strip())
    return lines


def _write_rejects(con: Any, source_file: str, rejects: Path, day: date) -> None:
    """One line per rejected row: its line number, bad columns and errors, and its text."""
    rejects.parent.mkdir(parents=True, exist_ok=True)
    with publishing(rejects) as temporary:
        con.execute(
            """COPY (
                SELECT $file AS file, line,
                       string_agg(column_name, ';' ORDER BY column_idx) AS "column",
                       string_agg(DISTINCT error_type, ';') AS error_type,
                       string_agg(CASE WHEN column_name = 'fecha'
                                       THEN 'fecha is not ' || $day ELSE error_message END,
                                  '; ' ORDER BY column_idx) AS error_message,
                       any_value(csv_line) AS csv_line
                FROM rejects GROUP BY line ORDER BY line
            ) TO $out (HEADER, DELIMITER ',')""",
            {"file": source_file, "out": str(temporary), "day": day.isoformat()},
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


MIN_REPLACE_SHARE = 0.9
"""A day already loaded is replaced only by at least this share of its rows (see
:func:`check_replacement`): a re-published day may drop a few rows, never most of them."""


def check_replacement(source_file: str, loaded: int, staged: int, min_share: float) -> None:
    """Raise BadInput naming the file when ``staged`` rows would replace ``loaded`` ones with
    fewer than ``min_share`` of them. An empty file never replaces loaded rows unless
    ``min_share`` is 0, which accepts any replacement."""
    if not loaded or min_share <= 0:
        return
    if staged == 0 or staged < min_share * loaded:
        raise BadInput(
            f"{source_file}: {staged:,} rows would replace the {loaded:,} loaded for its day "
            f"(fewer than {min_share:.0%}); the loaded rows are kept. Set min_replace_share "
            "lower to accept it"
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
    min_replace_share: float = MIN_REPLACE_SHARE,
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
    result = load_days(
        database,
        [item],
        cap_mb=cap_mb,
        temp_root=temp_root,
        min_replace_share=min_replace_share,
    )
    if result["failed"]:
        failure = result["failed"][0]
        if failure.get("kind", "BadInput") == "BadInput":
            raise BadInput(failure["error"])
        raise RuntimeError(f"{failure['kind']}: {failure['error']}")
    return result["loaded"][0]


def load_days(
    database: str,
    staged: list[dict[str, Any]],
    cap_mb: float = 500.0,
    temp_root: str | None = None,
    min_replace_share: float = MIN_REPLACE_SHARE,
) -> dict[str, Any]:
    """Load staged days (``stage_day`` results) in date order, one transaction per day.

    Returns ``{"loaded": [...], "failed": [{"source_file", "error", "kind"}]}``: a day that
    cannot be loaded is rolled back and reported, the others go on. Out of memory is raised
    (retryable); a database that cannot be written raises OutputUnavailable once.
    """
    loaded: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    try:
        Path(database).resolve().parent.mkdir(parents=True, exist_ok=True)
        with _scratch_dir(temp_root) as scratch:
            con = _connect(database, cap_mb, scratch)
            try:
                ensure_schema(con)
                for item in sorted(staged, key=lambda i: (i["day"], i["source_file"])):
                    try:
                        loaded.append(_replace_day(con, item, database, min_replace_share))
                    except (BadInput, duckdb.Error) as exc:
                        if isinstance(exc, duckdb.OutOfMemoryException):
                            raise
                        failed.append(
                            {
                                "source_file": item["source_file"],
                                "error": str(exc),
                                "kind": type(exc).__name__,
                            }
                        )
                        log.error("%s: not loaded: %s", item["source_file"], exc)
                con.execute("CHECKPOINT")
            finally:
                con.close()
    except (duckdb.Error, OSError) as exc:
        fault = output_fault(exc, database)
        if fault is None or isinstance(exc, duckdb.OutOfMemoryException):
            raise
        raise fault from None
    return {"loaded": loaded, "failed": failed}


def _replace_day(
    con: Any, item: dict[str, Any], database: str, min_replace_share: float
) -> dict[str, Any]:
    """Replace one day and zone type with its staged rows, in one transaction: nothing is
    deleted before the rows that replace them are known to be enough (see
    :func:`check_replacement`)."""
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
        present = con.execute(
            f"SELECT count(*) FROM {bronze} WHERE fecha = $day AND zone_type = $zone", key
        ).fetchone()[0]
        arriving = con.execute(
            "SELECT count(*) FROM read_parquet($path)", {"path": item["staging"]}
        ).fetchone()[0]
        check_replacement(source_file, int(present), int(arriving), min_replace_share)
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
        _rollback(con)
        fault = output_fault(exc, database) if isinstance(exc, duckdb.Error) else None
        if fault is not None and not isinstance(exc, duckdb.OutOfMemoryException):
            raise fault from exc
        raise
    return {
        "day": item["day"],
        "zone_type": zone_type,
        "source_file": source_file,
        "rows": int(inserted),
        "replaced": int(deleted),
        "seconds": round(time.monotonic() - started, 3),
    }


def _rollback(con: Any) -> None:
    """Roll back after a failure, keeping that failure the one raised: a COMMIT that failed
    may have ended the transaction already, and the ROLLBACK's own error would hide it."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error as exc:
        log.debug("rollback after a failure: %s", exc)


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
