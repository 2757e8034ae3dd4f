"""Parameters of the MITMA OD ingest, validated before any work starts; errors name the
parameter."""

from __future__ import annotations

import os
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field, ValidationInfo, field_validator, model_validator

from flows.common.params import FlowParams, checks_inputs, is_url, problem, under_root
from flows.mitma_od.bronze import MIN_REPLACE_SHARE
from flows.mitma_od.discover import DEFAULT_SOURCE
from flows.mitma_od.schema import ZoneType


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
