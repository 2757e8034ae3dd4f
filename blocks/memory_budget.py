"""The memory-budget block: a budget override, fraction and per-tag caps, editable in the UI.

$HEADROOM_MEMORY_LIMIT wins over the block; the block wins over detection.
"""

from __future__ import annotations

import time

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from headroom.units import parse_size

BLOCK_NAME = "default"
_CACHE_S = 60.0
_cache: dict[str, tuple[float, MemoryBudget | None]] = {}


class MemoryBudget(Block):
    """How much memory headroom's tasks may use on a host."""

    _block_type_name = "headroom memory budget"
    _block_type_slug = "headroom-memory-budget"
    _description = "Memory budget for headroom tasks (the HEADROOM_MEMORY_LIMIT env var wins)."

    limit: str | None = Field(
        default=None, description="Budget as given, e.g. '6GiB' or '1500MB'; empty: detect."
    )
    fraction: float = Field(
        default=0.8, gt=0, le=1, description="Share of host/cgroup memory when detecting."
    )
    tag_caps: dict[str, str] = Field(
        default_factory=dict,
        description="Per-tag cap overrides of deployments/limits.toml, e.g. {'mitma-od': "
        "'300MiB'}; slots stay as declared there.",
    )

    @field_validator("tag_caps")
    @classmethod
    def _valid_caps(cls, value: dict[str, str]) -> dict[str, str]:
        for tag, size in value.items():
            parse_size(size, name=f"tag_caps[{tag!r}]")
        return value

    @field_validator("limit")
    @classmethod
    def _valid_limit(cls, value: str | None) -> str | None:
        if value:
            parse_size(value, name="limit")
        return value or None


def load_budget_block(name: str = BLOCK_NAME) -> MemoryBudget | None:
    """The saved block, cached for a minute; None when none is saved."""
    cached = _cache.get(name)
    if cached and time.monotonic() - cached[0] < _CACHE_S:
        return cached[1]
    try:
        block: MemoryBudget | None = MemoryBudget.load(name)  # type: ignore[assignment]
    except ValueError:
        block = None
    _cache[name] = (time.monotonic(), block)
    return block


def forget_cached_block() -> None:
    """Drop the cached block so the next load reads the server (after an edit)."""
    _cache.clear()
