"""The parameters of ``convert_iso_lmp``, validated before any work starts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from flows.iso_lmp import ISOS, iso_format
from flows.iso_lmp.base import Market
from flows.iso_lmp.dataset import MIN_REPLACE_SHARE


class IsoLmpParams(BaseModel):
    """What to convert: ISOs, days, markets, where raw files are and where the dataset goes."""

    iso: list[str] = Field(description="ISO ids; 'all' or a comma-separated list accepted.")
    start: date = Field(description="First operating day (default: yesterday, UTC).")
    end: date = Field(description="Last operating day, inclusive (default: start).")
    markets: list[Market] | None = Field(None, description="Markets; default: all known.")
    raw: str = Field(min_length=1, description="Directory of raw files (one per ISO allowed).")
    out: str = Field(min_length=1, description="Dataset root: local path or s3://bucket/prefix.")
    fetch: bool = Field(False, description="Download missing raw files first.")
    source: str | None = Field(None, description="Mirror base URL instead of ISO endpoints.")
    max_workers: int = Field(2, ge=1, le=64)
    chunk_scale: float = Field(1.0, gt=0, le=1)
    min_replace_share: float = Field(
        MIN_REPLACE_SHARE,
        ge=0,
        le=1,
        description="A published partition is replaced only by at least this share of its "
        "rows (0: any replacement).",
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, values: Any) -> Any:
        if isinstance(values, dict):
            values = dict(values)
            if values.get("start") is None:
                values["start"] = datetime.now(UTC).date() - timedelta(days=1)
            if values.get("end") is None:
                values["end"] = values["start"]
        return values

    @field_validator("iso", mode="before")
    @classmethod
    def _isos(cls, value: Any) -> list[str]:
        items = value.split(",") if isinstance(value, str) else list(value or [])
        items = [str(i).strip() for i in items if str(i).strip()]
        if not items or any(i.lower() == "all" for i in items):
            return list(ISOS)
        try:
            return list(dict.fromkeys(iso_format(i).iso_id for i in items))
        except KeyError as exc:
            raise ValueError(f"iso: {exc.args[0]}") from None

    @field_validator("markets", mode="before")
    @classmethod
    def _markets(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [m.strip() for m in value.split(",") if m.strip()]
        return value or None

    @model_validator(mode="after")
    def _range(self) -> IsoLmpParams:
        if self.end < self.start:
            raise ValueError(f"end: {self.end} is before start {self.start}")
        if (self.end - self.start).days > 3660:
            raise ValueError("end: at most ten years per run")
        if self.markets:
            known = {m for iso in self.iso for m in iso_format(iso).markets}
            unknown = [m.value for m in self.markets if m not in known]
            if unknown:
                raise ValueError(f"markets: {unknown} not published by {self.iso}")
        return self

    def markets_of(self, iso: str) -> list[Market]:
        """The requested markets this ISO publishes."""
        own = iso_format(iso).markets
        return [m for m in own if self.markets is None or m in self.markets]
