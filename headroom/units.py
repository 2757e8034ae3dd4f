"""Memory sizes: user strings in MB (10^6) or MiB (2^20); MiB inside headroom."""

from __future__ import annotations

import re

MIB = 1 << 20

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 1 << 10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 1 << 20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 1 << 30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float, *, name: str = "size") -> int:
    """Bytes from ``"2GiB"``, ``"1500MB"``, ``"512 MiB"`` or a plain number of bytes.

    MB, GB are powers of ten; MiB, GiB powers of two. ``name`` goes into the error message.
    """
    if isinstance(text, bool):
        raise ValueError(f"{name}: expected a size like '2GiB' or '1500MB', got {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"{name}: a size cannot be negative ({text})")
        return int(text)
    match = _SIZE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{name}: expected a size like '2GiB' or '1500MB', got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_mib(mib: float) -> str:
    """A size in MiB for people: ``1.5 GiB`` or ``300 MiB``."""
    if mib >= 1024:
        return f"{mib / 1024:.1f} GiB"
    return f"{mib:.0f} MiB"


def duckdb_limit(mib: float) -> str:
    """A DuckDB memory_limit value; explicit MiB because DuckDB reads 'MB' as 10^6."""
    return f"{max(int(mib), 1)}MiB"
