"""Registration of headroom's block types (importing the modules makes them loadable)."""

from __future__ import annotations

from blocks.memory_budget import MemoryBudget
from blocks.storage import OutputStorage

BLOCK_TYPES = (MemoryBudget, OutputStorage)


def register_blocks() -> list[str]:
    """Register every block type with the current Prefect API; returns their slugs."""
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
    return [b.get_block_type_slug() for b in BLOCK_TYPES]
