"""The parameters of the OOM drill, validated before any work starts."""

from __future__ import annotations

from pydantic import Field

from flows.common.params import FlowParams


class OomDrillParams(FlowParams):
    """How much the drill checksums."""

    parts: int = Field(2, ge=1, le=64, description="Parts, one budgeted task each.")
    rows: int = Field(
        600_000,
        ge=1,
        le=10_000_000,
        description="Rows of 1 KiB per part; the default overshoots the fraud-gen cap on purpose.",
    )
