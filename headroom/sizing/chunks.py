"""Chunk sizes: the first one for an attempt, the shrink after an OOM, and the floor."""

from __future__ import annotations

import math
from dataclasses import dataclass

from headroom.errors import ChunkFloorReached
from headroom.units import format_mib

# Fraction of the cap a first chunk may plan to use: the rest absorbs estimate error.
FIT_SAFETY = 0.8


@dataclass(frozen=True)
class Chunking:
    """A task's chunk parameter: its name, default, floor and an optional bytes-per-row guess."""

    param: str
    default: int
    floor: int
    bytes_per_row: float | None = None
    ceiling: int | None = None

    def __post_init__(self) -> None:
        if self.floor < 1 or self.default < self.floor:
            raise ValueError(
                f"chunk {self.param}: need 1 <= floor ({self.floor}) <= default ({self.default})"
            )


def fits(cap_mb: float, bytes_per_row: float, base_mb: float = 0.0) -> int:
    """The most rows whose estimated memory (base + rows x bytes per row) fits the cap."""
    room = (cap_mb * FIT_SAFETY - base_mb) * (1 << 20)
    return max(0, int(room / max(bytes_per_row, 1e-9)))


def first_size(
    spec: Chunking,
    cap_mb: float,
    scale: float = 1.0,
    learned: tuple[float, float] | None = None,
) -> tuple[int, str]:
    """(size, where it came from) for a first attempt: history, else estimate, else default.

    ``learned`` is (peak bytes per row above the base, base MiB) from :class:`History`.
    """
    if not 0 < scale <= 1:
        raise ValueError(f"chunk_scale must be in (0, 1], got {scale}")
    if learned:
        bytes_per_row, base_mb = learned
        size, origin = fits(cap_mb, bytes_per_row, base_mb), "history"
    elif spec.bytes_per_row:
        size, origin = min(spec.default, fits(cap_mb, spec.bytes_per_row)), "estimate"
    else:
        size, origin = spec.default, "default"
    if spec.ceiling is not None:
        size = min(size, spec.ceiling)
    return max(spec.floor, int(size * scale)), origin


def next_size(size: int, cap_mb: float, peak_mb: float | None) -> int:
    """The size after an OOM: ``min(size / 2, size * 0.8 * cap / peak)``."""
    half = size / 2
    if peak_mb and peak_mb > 0:
        return max(1, int(min(half, size * FIT_SAFETY * cap_mb / peak_mb)))
    return max(1, int(half))


def shrink(
    spec: Chunking,
    size: int,
    cap_mb: float,
    peak_mb: float | None,
    *,
    task: str,
    budget_mb: float | None = None,
    host_mb: float | None = None,
    tag: str | None = None,
) -> int:
    """The next size after an OOM, or :class:`ChunkFloorReached` saying what to change."""
    if size <= spec.floor:
        advice = []
        if budget_mb is not None:
            offered = f"; the host offers {format_mib(host_mb)}" if host_mb else ""
            advice.append(f"raise HEADROOM_MEMORY_LIMIT (now {format_mib(budget_mb)}{offered})")
        if tag:
            advice.append(f"lower the slots of tag {tag!r} so each task gets a bigger cap")
        advice.append(f"or lower the floor of {spec.param}")
        raise ChunkFloorReached(
            f"{task} does not fit in {format_mib(cap_mb)} even at {spec.param}={size:,}: "
            + ", ".join(advice)
        )
    return max(spec.floor, next_size(size, cap_mb, peak_mb))


def size_class(input_bytes: int | None) -> int:
    """log2 of the input size, the key under which history is kept (-1 when unknown)."""
    if not input_bytes or input_bytes <= 0:
        return -1
    return int(math.log2(input_bytes))
