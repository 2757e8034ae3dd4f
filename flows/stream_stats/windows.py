"""The window model of stream_stats: window length, slide and allowed lateness in
milliseconds, and durations as users write them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from flows.stream_stats.events import KEY_FIELDS
from headroom.errors import BadInput

P95 = 0.95


SCHEMA_VERSION = 1


NO_TS = np.iinfo(np.int64).min


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*$", re.I)


_UNIT_MS = {
    "ms": 1,
    "s": 1000,
    "sec": 1000,
    "m": 60_000,
    "min": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}


def parse_duration_ms(value: str | int | float, *, name: str) -> int:
    """Milliseconds from '500ms', '30s', '1min' (or '1m'), '2h', '1d', or plain seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        millis = float(value) * 1000
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise BadInput(f"parameter {name}: {value!r} is not a duration like 30s, 1min, 2h")
        millis = float(match.group(1)) * _UNIT_MS[(match.group(2) or "s").lower()]
    if millis < 0 or millis != int(millis):
        raise BadInput(f"parameter {name}: {value!r} must be a whole, non-negative ms count")
    return int(millis)


@dataclass(frozen=True)
class WindowSpec:
    """Window length, slide and allowed lateness (ms) and the group-by keys."""

    window_ms: int
    slide_ms: int
    watermark_ms: int
    keys: tuple[str, ...] = KEY_FIELDS

    @property
    def per_event(self) -> int:
        """Windows each event belongs to."""
        return self.window_ms // self.slide_ms

    def as_config(self) -> dict[str, str]:
        return {
            "window_ms": str(self.window_ms),
            "slide_ms": str(self.slide_ms),
            "watermark_ms": str(self.watermark_ms),
            "keys": ",".join(self.keys),
            "schema_version": str(SCHEMA_VERSION),
        }
