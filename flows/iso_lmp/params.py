"""The parameters of ``convert_iso_lmp``, validated before any work starts."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from flows.common.params import FlowParams, checks_inputs, literal_of, problem, under_root
from flows.iso_lmp.base import Market
from flows.iso_lmp.dataset import MIN_REPLACE_SHARE
from flows.iso_lmp.formats.registry import ISOS, iso_format

IsoName = literal_of(tuple(ISOS))
IsoChoice = literal_of(("all", *ISOS))


class IsoLmpParams(FlowParams):
    """What to convert: ISOs, days, markets, where raw files are and where the dataset goes."""

    iso: IsoChoice | list[IsoName] = Field(  # type: ignore[valid-type]
        "all",
        validate_default=True,
        description=f"'all', one ISO or a list of them: {', '.join(ISOS)}.",
    )
    start: date | None = Field(None, description="First operating day (default: yesterday, UTC).")
    end: date | None = Field(None, description="Last operating day, inclusive (default: start).")
    markets: list[Market] | None = Field(None, description="Markets; default: all known.")
    raw: str = Field(
        "data/iso_lmp/raw",
        min_length=1,
        description="Directory of raw files, one subdirectory per ISO (relative: under the data "
        "root). Must exist unless fetch is set.",
    )
    out: str = Field(
        "data/iso_lmp/dataset",
        min_length=1,
        description="Dataset root: local path (relative: under the data root) or "
        "s3://bucket/prefix.",
    )
    fetch: bool = Field(False, description="Download missing raw files first.")
    source: str | None = Field(None, description="Mirror base URL instead of ISO endpoints.")
    max_workers: int = Field(2, ge=1, le=64, description="Convert tasks this run submits at once.")
    chunk_scale: float = Field(
        1.0, gt=0, le=1, description="Scale every first chunk size by this (0 < x <= 1)."
    )
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
        items = [value] if isinstance(value, str) else list(value or [])
        items = [str(i).strip() for i in items if str(i).strip()]
        if not items or any(i.lower() == "all" for i in items):
            return list(ISOS)
        try:
            return list(dict.fromkeys(iso_format(i).iso_id for i in items))
        except KeyError as exc:
            raise problem("iso", exc.args[0]) from None

    @field_validator("raw", "out")
    @classmethod
    def _paths(cls, value: str, info: ValidationInfo) -> str:
        return under_root(value, info)

    @model_validator(mode="after")
    def _range(self, info: ValidationInfo) -> IsoLmpParams:
        assert self.start is not None and self.end is not None  # set by _defaults
        if self.end < self.start:
            raise problem("end", f"{self.end} is before start {self.start}")
        if (self.end - self.start).days > 3660:
            raise problem("end", "at most ten years per run")
        if self.markets:
            known = {m for iso in self.iso for m in iso_format(iso).markets}
            unknown = [m.value for m in self.markets if m not in known]
            if unknown:
                raise problem("markets", f"{unknown} not published by {self.iso}")
        if checks_inputs(info) and not self.fetch and not os.path.isdir(self.raw):
            raise problem("raw", f"{self.raw!r} is not an existing directory (and fetch is off)")
        return self

    def markets_of(self, iso: str) -> list[Market]:
        """The requested markets this ISO publishes."""
        own = iso_format(iso).markets
        return [m for m in own if self.markets is None or m in self.markets]
