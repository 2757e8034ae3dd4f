"""MITMA origin-destination trips into DuckDB: discovery, download, staging, loading, cleanup.

Pure logic without prefect, so guarded children start fast and tests need no server. The
published format is described in FORMATS.md (MITMA mobility study v2, daily OD files):
gzip CSV, ``|`` delimiter, 15 columns, ``NA`` for missing values, an optional UTF-8 BOM.

Stages hand each other files on disk: the raw cache (``<cache>/raw/<published path>``), one
Parquet staging file per day (``<cache>/staging``), rejects files (``<cache>/rejects``), then
the bronze table ``bronze_viajes`` of a DuckDB file, with the hourly OD view
``silver_od_hourly`` over it.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import logging
import os
import re
import shutil
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin, urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from headroom.errors import BadInput
from headroom.units import duckdb_limit

log = logging.getLogger(__name__)

ZONE_TYPES = ("distritos", "municipios", "GAU")
ZoneType = Literal["distritos", "municipios", "GAU"]
DEFAULT_SOURCE = "https://movilidad-opendata.mitma.es/RSS.xml"
# The published header, in order (MITMA study v2, 2022 onwards).
COLUMNS = (
    "fecha",
    "periodo",
    "origen",
    "destino",
    "distancia",
    "actividad_origen",
    "actividad_destino",
    "estudio_origen_posible",
    "estudio_destino_posible",
    "residencia",
    "renta",
    "edad",
    "sexo",
    "viajes",
    "viajes_km",
)
_HOURS = ", ".join(f"'{h}'" for h in [*(f"{h:02d}" for h in range(24)), *map(str, range(10))])
# How DuckDB reads each column: the domain-checked ones (hour, si/no) as ENUMs so that a
# value outside the domain is a rejected row with its line number, not a silent NULL.
CSV_TYPES = {
    "fecha": "DATE",
    "periodo": f"ENUM({_HOURS})",
    "origen": "VARCHAR",
    "destino": "VARCHAR",
    "distancia": "VARCHAR",
    "actividad_origen": "VARCHAR",
    "actividad_destino": "VARCHAR",
    "estudio_origen_posible": "ENUM('si', 'no')",
    "estudio_destino_posible": "ENUM('si', 'no')",
    "residencia": "VARCHAR",
    "renta": "VARCHAR",
    "edad": "VARCHAR",
    "sexo": "VARCHAR",
    "viajes": "DECIMAL(18,6)",
    "viajes_km": "DECIMAL(18,6)",
}
# The bronze table: the published columns with their analytical types, plus provenance.
BRONZE_TABLE = "bronze_viajes"
LOADS_TABLE = "mitma_loads"
SILVER_VIEW = "silver_od_hourly"
BRONZE_TYPES = {
    **CSV_TYPES,
    "periodo": "TINYINT",
    "estudio_origen_posible": "BOOLEAN",
    "estudio_destino_posible": "BOOLEAN",
    "zone_type": "VARCHAR",
    "source_file": "VARCHAR",
}
FILE_NAME = re.compile(r"^(?P<day>\d{8})_Viajes_(?P<zone>distritos|municipios|GAU)\.csv\.gz$")
TMP_PREFIX = ".tmp-"
# ENUM to analytical type without going through text: the hour ENUM lists '00'..'23' then
# '0'..'9'; the si/no ENUM has 'si' first.
_STAGE_EXPRESSIONS = {
    "periodo": "CAST(enum_code(periodo) % 24 AS TINYINT) AS periodo",
    "estudio_origen_posible": "(enum_code(estudio_origen_posible) = 0) AS estudio_origen_posible",
    "estudio_destino_posible": "(enum_code(estudio_destino_posible) = 0) AS "
    "estudio_destino_posible",
}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_BLOCK_BYTES = 1 << 20


class TransientDownloadError(ConnectionError):
    """A download that may succeed when tried again (connection, 5xx, short body)."""


def identifier(name: str) -> str:
    """``name`` double-quoted for SQL, after checking it is a plain identifier."""
    if not _IDENTIFIER.match(name):
        raise BadInput(f"not a valid SQL identifier: {name!r}")
    return f'"{name}"'


# ---------------------------------------------------------------------------------------------
# Parameters


class MitmaParams(BaseModel):
    """Parameters of one ingestion run (the flow's flat keyword parameters)."""

    model_config = ConfigDict(extra="forbid")

    start_date: date | None = Field(None, description="First day; default: lookback_days ago.")
    end_date: date | None = Field(None, description="Last day (inclusive); default: yesterday.")
    zone_type: ZoneType = Field("distritos", description="distritos, municipios or GAU.")
    source: str = Field(
        DEFAULT_SOURCE,
        description="Base URL of the open-data site, URL of its RSS feed, or a local mirror.",
    )
    database: str = Field("data/mitma/mitma.duckdb", description="DuckDB file of bronze/silver.")
    cache_dir: str | None = Field(None, description="Raw cache + staging; default: next to db.")
    raw_retention_days: int = Field(
        0, ge=0, le=3650, description="Keep downloaded files this many days (0: drop on load)."
    )
    lookback_days: int = Field(7, ge=1, le=366, description="Days back when start_date is unset.")
    missing_only: bool = Field(False, description="Skip days already loaded for this zone type.")
    max_workers: int = Field(15, ge=1, le=64, description="Days processed at once by this run.")
    chunk_scale: float = Field(1.0, gt=0, le=1, description="Scale of every first chunk size.")

    @field_validator("source")
    @classmethod
    def _source_kind(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme in ("http", "https") and parsed.netloc:
            return value
        if parsed.scheme in ("", "file") and value.strip():
            return value
        raise ValueError(f"source: expected an http(s) URL or a local directory, got {value!r}")

    @field_validator("database")
    @classmethod
    def _database_file(cls, value: str) -> str:
        if not value.strip() or value.strip() == ":memory:":
            raise ValueError("database: expected the path of a DuckDB file")
        return value

    @model_validator(mode="after")
    def _date_range(self) -> MitmaParams:
        start, end = self.days_range()
        if end < start:
            raise ValueError(f"end_date ({end}) is before start_date ({start})")
        if (end - start).days >= 366:
            raise ValueError(f"start_date..end_date spans {(end - start).days + 1} days (max 366)")
        return self

    def days_range(self, today: date | None = None) -> tuple[date, date]:
        """(first, last) day to ingest, defaults resolved against ``today``."""
        today = today or date.today()
        end = self.end_date or today - timedelta(days=1)
        start = self.start_date or min(end, today - timedelta(days=self.lookback_days))
        return start, end

    def days(self, today: date | None = None) -> list[date]:
        """Every day of the range, in order."""
        start, end = self.days_range(today)
        return [start + timedelta(days=i) for i in range((end - start).days + 1)]

    def cache_root(self) -> Path:
        """Where raw files, staging files and rejects live."""
        if self.cache_dir:
            return Path(self.cache_dir)
        return Path(self.database).resolve().parent / "mitma-cache"


# ---------------------------------------------------------------------------------------------
# Published layout


def daily_name(zone_type: str, day: date) -> str:
    """``YYYYMMDD_Viajes_<zone_type>.csv.gz``."""
    _check_zone_type(zone_type)
    return f"{day:%Y%m%d}_Viajes_{zone_type}.csv.gz"


def daily_relpath(zone_type: str, day: date) -> str:
    """The file's path under the open-data root, as published."""
    return (
        f"estudios_basicos/por-{zone_type}/viajes/ficheros-diarios/{day:%Y-%m}/"
        f"{daily_name(zone_type, day)}"
    )


def day_of_name(name: str) -> tuple[date, str] | None:
    """(day, zone type) of a published daily file name, or None for any other file."""
    match = FILE_NAME.match(name)
    if not match:
        return None
    try:
        return datetime.strptime(match["day"], "%Y%m%d").date(), match["zone"]
    except ValueError:
        return None


def _check_zone_type(zone_type: str) -> None:
    if zone_type not in ZONE_TYPES:
        raise BadInput(f"zone_type: expected one of {', '.join(ZONE_TYPES)}, got {zone_type!r}")


# ---------------------------------------------------------------------------------------------
# Discovery


@dataclass(frozen=True)
class DailyFile:
    """One published daily file: where to get it and which day and zone type it holds."""

    day: date
    zone_type: str
    name: str
    location: str
    """An http(s) URL, or a local path for a directory mirror."""

    @property
    def is_local(self) -> bool:
        return urlparse(self.location).scheme not in ("http", "https")

    def as_item(self) -> dict[str, str]:
        """JSON-able form for task parameters."""
        return {
            "day": self.day.isoformat(),
            "zone_type": self.zone_type,
            "name": self.name,
            "location": self.location,
        }


@dataclass
class Discovery:
    """The files found for a range of days, the days without one, and how they were found."""

    files: list[DailyFile] = field(default_factory=list)
    gaps: list[date] = field(default_factory=list)
    method: str = ""


def discover(
    source: str, zone_type: str, days: Iterable[date], timeout_s: float = 30.0
) -> Discovery:
    """List the daily files of ``days`` from an RSS feed, the URL pattern or a local mirror."""
    _check_zone_type(zone_type)
    wanted = sorted(set(days))
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        if parsed.path.lower().endswith(".xml"):
            with _open_url(source, timeout_s) as response:
                found = files_from_rss(response, zone_type, base_url=source)
            method = f"RSS feed {source}"
        else:
            found = _files_by_pattern(source, zone_type, wanted, timeout_s)
            method = f"URL pattern under {source}"
    else:
        root = Path(parsed.path if parsed.scheme == "file" else source)
        if root.is_file() and root.suffix.lower() == ".xml":
            with root.open("rb") as handle:
                found = files_from_rss(handle, zone_type, base_url=root.parent.as_uri() + "/")
            method = f"RSS file {root}"
        elif root.is_dir():
            found = _files_in_directory(root, zone_type, wanted)
            method = f"directory {root}"
        else:
            raise BadInput(f"source: {source!r} is neither a URL nor an existing directory")
    by_day = {f.day: f for f in found if f.zone_type == zone_type and f.day in set(wanted)}
    result = Discovery(
        [by_day[d] for d in wanted if d in by_day], [d for d in wanted if d not in by_day], method
    )
    for gap in result.gaps:
        log.warning("no %s file for %s (%s): a gap, not a failure", zone_type, gap, method)
    return result


def files_from_rss(
    stream: Any, zone_type: str | None = None, base_url: str = ""
) -> list[DailyFile]:
    """Daily files listed in an RSS 2.0 feed, read incrementally (the real feed is large)."""
    import xml.etree.ElementTree as ET

    found: list[DailyFile] = []
    try:
        for _, element in ET.iterparse(stream, events=("end",)):
            if _local_name(element.tag) != "item":
                continue
            fields = {_local_name(child.tag): (child.text or "").strip() for child in element}
            element.clear()
            link = fields.get("link") or fields.get("guid") or ""
            if not link:
                continue
            link = urljoin(base_url, link)
            name = Path(urlparse(link).path).name
            parsed = day_of_name(name)
            if parsed is None or (zone_type is not None and parsed[1] != zone_type):
                continue
            location = link
            if urlparse(link).scheme == "file":
                location = urlparse(link).path
            found.append(DailyFile(parsed[0], parsed[1], name, location))
    except ET.ParseError as exc:
        raise BadInput(f"source: the RSS feed is not valid XML ({exc})") from None
    return found


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _files_by_pattern(
    base_url: str, zone_type: str, days: list[date], timeout_s: float
) -> list[DailyFile]:
    import urllib.error
    import urllib.request

    base = base_url if base_url.endswith("/") else base_url + "/"
    found = []
    for day in days:
        url = urljoin(base, daily_relpath(zone_type, day))
        request = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 404, 410):
                continue
            raise TransientDownloadError(f"HEAD {url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise TransientDownloadError(f"HEAD {url}: {exc}") from None
        found.append(DailyFile(day, zone_type, daily_name(zone_type, day), url))
    return found


def _files_in_directory(root: Path, zone_type: str, days: list[date]) -> list[DailyFile]:
    found = []
    for day in days:
        # The published layout, or the files side by side in one folder.
        for candidate in (root / daily_relpath(zone_type, day), root / daily_name(zone_type, day)):
            if candidate.is_file():
                found.append(DailyFile(day, zone_type, candidate.name, str(candidate)))
                break
    return found


# ---------------------------------------------------------------------------------------------
# Download


@contextlib.contextmanager
def _open_url(url: str, timeout_s: float, method: str = "GET") -> Iterator[Any]:
    import urllib.error
    import urllib.request

    if urlparse(url).scheme not in ("http", "https"):
        raise BadInput(f"not an http(s) URL: {url!r}")
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "headroom"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code in (400, 401, 403, 404, 410):
            raise BadInput(f"{url}: HTTP {exc.code} {exc.reason}") from None
        raise TransientDownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TransientDownloadError(f"{url}: {exc}") from None
    with response:
        yield response


def temporary_name(final: Path) -> Path:
    """A sibling temporary path for ``final``; names the writing process so that the next run
    can tell the leftovers of a killed writer from the files of a live one."""
    return final.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{final.name}")


def download_file(url: str, destination: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Stream ``url`` to ``destination`` (temporary name, then rename); skip a complete copy.

    A copy is complete when its size equals the server's Content-Length.
    """
    final = Path(destination)
    final.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with _open_url(url, timeout_s) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if expected is not None and final.is_file() and final.stat().st_size == expected:
            return {"path": str(final), "bytes": expected, "skipped": True, "seconds": 0.0}
        temporary = temporary_name(final)
        written = 0
        try:
            with temporary.open("wb") as out:
                while block := response.read(_BLOCK_BYTES):
                    out.write(block)
                    written += len(block)
            if expected is not None and written != expected:
                raise TransientDownloadError(
                    f"{url}: got {written:,} of {expected:,} bytes (connection cut short)"
                )
            os.replace(temporary, final)
        except (OSError, TimeoutError, http.client.HTTPException) as exc:
            temporary.unlink(missing_ok=True)
            if isinstance(exc, TransientDownloadError):
                raise
            raise TransientDownloadError(f"{url}: {exc}") from None
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    return {
        "path": str(final),
        "bytes": written,
        "skipped": False,
        "seconds": round(time.monotonic() - started, 3),
    }


# ---------------------------------------------------------------------------------------------
# Staging


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


def duckdb_settings(cap_mb: float, temp_dir: str | None) -> dict[str, Any]:
    """memory_limit, threads and temp directory for a DuckDB connection under ``cap_mb``.

    DuckDB's memory_limit covers its buffer manager only; the Python process, the gzip
    reader and the Parquet writer's buffers sit outside it, so it gets half the cap.
    """
    threads = max(1, min(os.cpu_count() or 1, int(cap_mb // 128)))
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


def _connect(database: str, cap_mb: float, temp_dir: str | None, read_only: bool = False):
    import duckdb

    return duckdb.connect(database, read_only=read_only, config=duckdb_settings(cap_mb, temp_dir))


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
    import duckdb

    _check_zone_type(zone_type)
    the_day = date.fromisoformat(day)
    check_header(raw_path, source_file)
    final = Path(staging_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(final)
    started = time.monotonic()
    select = ", ".join(_STAGE_EXPRESSIONS.get(c, c) for c in COLUMNS)
    try:
        with _scratch_dir(temp_root) as scratch:
            con = _connect(":memory:", cap_mb, scratch)
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
        os.replace(temporary, final)
    except duckdb.Error as exc:
        temporary.unlink(missing_ok=True)
        if isinstance(exc, duckdb.OutOfMemoryException):
            raise
        text = str(exc).splitlines()[0]
        if "gzip" in text.lower() or "compress" in text.lower():
            raise BadInput(f"{source_file}: corrupt gzip data ({text})") from None
        if isinstance(exc, duckdb.InvalidInputException | duckdb.ConversionException):
            raise BadInput(f"{source_file}: {text}") from None
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
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
    temporary = temporary_name(rejects)
    try:
        con.execute(
            """COPY (SELECT $file AS file, line, column_name AS "column", error_type,
                            error_message, csv_line
                     FROM rejects ORDER BY line) TO $out (HEADER, DELIMITER ',')""",
            {"file": source_file, "out": str(temporary)},
        )
        os.replace(temporary, rejects)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
    import duckdb

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
    import duckdb

    zone_type, source_file = item["zone_type"], item["source_file"]
    _check_zone_type(zone_type)
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
    _check_zone_type(zone_type)
    if not Path(database).is_file():
        return set()
    import duckdb

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
    import duckdb

    _check_zone_type(zone_type)
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


# ---------------------------------------------------------------------------------------------
# Disk


def _owner_alive(name: str) -> bool:
    """Whether the process named in a temporary's name (``.tmp-<pid>-...``) still runs."""
    match = re.match(r"^(?:\.tmp-|duckdb-)(\d+)-", name)
    if not match:
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(*roots: str | os.PathLike[str]) -> list[str]:
    """Delete temporary files and spill directories that killed runs left behind."""
    removed = []
    for root in roots:
        base = Path(root)
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            name = path.name
            if not (name.startswith(TMP_PREFIX) or name.startswith("duckdb-")):
                continue
            if _owner_alive(name):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path))
    return removed


def cleanup_after_load(
    staging_paths: Iterable[str],
    raw_paths: Iterable[str],
    raw_root: str,
    retention_days: int,
    now: float | None = None,
) -> dict[str, int]:
    """Drop loaded days' staging files; raw files at once (retention 0) or once expired."""
    now = time.time() if now is None else now
    staged = 0
    for path in staging_paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            staged += 1
    raw = 0
    root = Path(raw_root).resolve()
    if retention_days == 0:
        for path in raw_paths:
            # Only files of our own cache: a local mirror given as source is never ours.
            if root in Path(path).resolve().parents:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    raw += 1
    elif root.is_dir():
        horizon = now - retention_days * 86400
        for path in root.rglob("*.csv.gz"):
            if path.stat().st_mtime < horizon:
                path.unlink(missing_ok=True)
                raw += 1
    return {"staging_removed": staged, "raw_removed": raw}
