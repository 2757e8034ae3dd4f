"""MITMA origin-destination trips into DuckDB: parameters, discovery, download, cleanup.

Pure logic without prefect, so it tests without a server. The published format is described
in FORMATS.md (MITMA mobility study v2, daily OD files): gzip CSV, ``|`` delimiter, 15
columns, ``NA`` for missing values, an optional UTF-8 BOM.

Stages hand each other files on disk: the raw cache (``<cache>/raw/<published path>``), one
Parquet staging file per day (``<cache>/staging``), rejects files (``<cache>/rejects``), then
the bronze table ``bronze_viajes`` of a DuckDB file, with the hourly OD view
``silver_od_hourly`` over it. The schema lives in ``mitma_od_schema``, staging and loading
in ``mitma_od_duckdb`` (kept apart so the guarded children import neither pydantic nor HTTP);
both are re-exported here so callers have one module to import.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

from pydantic import Field, ValidationInfo, field_validator, model_validator

from flows.mitma_od_duckdb import (
    MIN_REPLACE_SHARE,
    check_header,
    check_replacement,
    csv_buffer_bytes,
    day_totals,
    duckdb_settings,
    ensure_schema,
    load_day,
    load_days,
    loaded_days,
    stage_day,
)
from flows.mitma_od_schema import (
    BRONZE_TABLE,
    BRONZE_TYPES,
    COLUMNS,
    CSV_TYPES,
    LOADS_TABLE,
    SILVER_VIEW,
    ZONE_TYPES,
    ZoneType,
    identifier,
)
from flows.mitma_od_schema import check_zone_type as _check_zone_type
from flows.params_base import FlowParams, checks_inputs, is_url, problem, under_root
from headroom.errors import BadInput, output_fault
from headroom.storage import TMP_MARK, publishing

__all__ = [
    "MIN_REPLACE_SHARE",
    "BRONZE_TABLE",
    "BRONZE_TYPES",
    "COLUMNS",
    "CSV_TYPES",
    "LOADS_TABLE",
    "SILVER_VIEW",
    "ZONE_TYPES",
    "BadInput",
    "DailyFile",
    "Discovery",
    "MitmaParams",
    "TransientDownloadError",
    "ZoneType",
    "check_header",
    "check_replacement",
    "cleanup_after_load",
    "csv_buffer_bytes",
    "daily_name",
    "daily_relpath",
    "day_of_name",
    "day_totals",
    "discover",
    "download_file",
    "duckdb_settings",
    "ensure_schema",
    "files_from_rss",
    "identifier",
    "load_day",
    "load_days",
    "loaded_days",
    "remove_stale_temporaries",
    "stage_day",
]

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "https://movilidad-opendata.mitma.es/RSS.xml"
FILE_NAME = re.compile(r"^(?P<day>\d{8})_Viajes_(?P<zone>distritos|municipios|GAU)\.csv\.gz$")
_BLOCK_BYTES = 1 << 20


class TransientDownloadError(ConnectionError):
    """A download that may succeed when tried again (connection, 5xx, short body)."""


# ---------------------------------------------------------------------------------------------
# Parameters


class MitmaParams(FlowParams):
    """Parameters of one ingestion run (the flow's flat keyword parameters)."""

    start_date: date | None = Field(None, description="First day; default: lookback_days ago.")
    end_date: date | None = Field(None, description="Last day (inclusive); default: yesterday.")
    zone_type: ZoneType = Field("distritos", description="distritos, municipios or GAU.")
    source: str = Field(
        DEFAULT_SOURCE,
        min_length=1,
        description="Base URL of the open-data site, URL of its RSS feed, or a local mirror "
        "directory (relative: under the data root).",
    )
    database: str = Field(
        "data/mitma/mitma.duckdb",
        min_length=1,
        description="DuckDB file of bronze/silver (relative: under the data root).",
    )
    cache_dir: str | None = Field(
        None,
        description="Raw cache + staging (relative: under the data root); default: next "
        "to the database.",
    )
    raw_retention_days: int = Field(
        0, ge=0, le=3650, description="Keep downloaded files this many days (0: drop on load)."
    )
    lookback_days: int = Field(7, ge=1, le=366, description="Days back when start_date is unset.")
    missing_only: bool = Field(False, description="Skip days already loaded for this zone type.")
    max_workers: int = Field(
        15, ge=1, le=64, description="Days processed at once by this run (staged: one a core)."
    )
    chunk_scale: float = Field(1.0, gt=0, le=1, description="Scale of every first chunk size.")
    min_replace_share: float = Field(
        MIN_REPLACE_SHARE,
        ge=0,
        le=1,
        description="A loaded day is replaced only by at least this share of its rows "
        "(0: any file, even an empty one, replaces it).",
    )

    @field_validator("source")
    @classmethod
    def _source_kind(cls, value: str, info: ValidationInfo) -> str:
        parsed = urlparse(value)
        if parsed.scheme in ("http", "https") and parsed.netloc:
            return value
        if parsed.scheme == "file" and value.strip():
            return value
        if not is_url(value) and value.strip():
            local = under_root(value, info)
            if checks_inputs(info) and not os.path.exists(local):
                raise problem("source", f"{value!r} is neither a URL nor an existing directory")
            return local
        raise problem("source", f"expected an http(s) URL or a local directory, got {value!r}")

    @field_validator("database")
    @classmethod
    def _database_file(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip() or value.strip() == ":memory:" or is_url(value):
            raise problem("database", "expected the path of a DuckDB file")
        return under_root(value, info)

    @field_validator("cache_dir")
    @classmethod
    def _cache_under_root(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else under_root(value, info)

    @model_validator(mode="after")
    def _date_range(self) -> MitmaParams:
        start, end = self.days_range()
        if end < start:
            raise problem("end_date", f"{end} is before start_date {start}")
        if (end - start).days >= 366:
            raise problem("end_date", f"the range spans {(end - start).days + 1} days (max 366)")
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
            raise unreachable(url, exc) from None
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


def unreachable(url: str, exc: BaseException) -> TransientDownloadError:
    """A host that does not answer (refused, unknown, timed out): named with the parameter
    every URL comes from."""
    parsed = urlparse(url)
    host = f"{parsed.hostname}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"
    reason = getattr(exc, "reason", None) or exc
    return TransientDownloadError(f"parameter source: cannot reach {host} ({reason}): {url}")


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
        raise unreachable(url, exc) from None
    with response:
        yield response


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
        written = 0
        try:
            with publishing(final) as temporary, temporary.open("wb") as out:
                while block := response.read(_BLOCK_BYTES):
                    out.write(block)
                    written += len(block)
                if expected is not None and written != expected:
                    raise TransientDownloadError(
                        f"{url}: got {written:,} of {expected:,} bytes (connection cut short)"
                    )
        except (OSError, TimeoutError, http.client.HTTPException) as exc:
            if isinstance(exc, TransientDownloadError):
                raise
            fault = output_fault(exc, str(final.parent))
            if fault is not None:  # the cache's disk, not the connection: no retry mends it
                raise fault from None
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
            if not (name.startswith(TMP_MARK) or name.startswith("duckdb-")):
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
