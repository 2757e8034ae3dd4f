"""Numpy parser for a bulk of stream entries in a RESP2 reply, in the canonical field order.

Pure logic without prefect. Entries written by the producer (fields in :data:`FIELDS` order,
values without line breaks) are a fixed number of lines each, so their columns are read
straight from the reply bytes; anything else makes :func:`parse_canonical` return None and
the caller (flows.stream_stats.sources.resp) falls back to slower parsers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flows.stream_stats.events import FIELDS, KEY_FIELDS

_LINES_PER_ENTRY = 4 + 4 * len(FIELDS)


_NAMES = [name.encode() for name in FIELDS]


def parse_canonical(data: bytes, count: int) -> ParsedEntries | None:
    """Columns of ``count`` canonical entries parsed with numpy, or None to parse otherwise.

    Line boundaries are found with numpy; lines sit at fixed offsets in canonical entries, so
    numbers are read digit-column by digit-column. None if any entry deviates (other field
    order, a value that is not a plain decimal): the caller falls back to slower parsers.
    """
    if count <= 0:
        return None
    step = _LINES_PER_ENTRY
    raw = np.frombuffer(data, dtype=np.uint8)
    # The parsers pass over each entry's bytes a few dozen times; a slice of the reply at a
    # time keeps those passes (and the line arrays) in the CPU cache.
    parts = []
    offset, done, window = 0, 0, _PARSE_WINDOW
    while done < count:
        crs = np.flatnonzero(raw[offset : offset + window] == 13)
        entries = min(len(crs) // step, count - done, _PARSE_SLICE)
        if entries == 0:
            if offset + window >= len(raw):
                return None  # the reply ends before its last entry does
            window *= 2
            continue
        need = entries * step
        ends = crs[:need] + offset
        if (raw.take(ends + 1, mode="clip") != 10).any():  # every CR starts a CRLF
            return None
        starts = np.empty(need, dtype=np.int64)
        starts[0] = offset
        starts[1:] = ends[:-1] + 2
        starts, ends = starts.reshape(entries, step), ends.reshape(entries, step)
        parsed = _parse_slice(raw, data, starts, ends, ends - starts)
        if parsed is None:
            return None
        parts.append(parsed)
        used = int(ends[-1, -1]) + 2 - offset
        offset, done = offset + used, done + entries
        window = used + used // 8  # the next slice's entries are about as long
    columns: dict[str, Any] = {}
    for name in FIELDS:
        pieces = [p[0][name] for p in parts]
        columns[name] = _merge_labels(pieces) if name in KEY_FIELDS else np.concatenate(pieces)
    return ParsedEntries(
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        columns,
        b"".join(p[3] for p in parts),
        count,
    )


_PARSE_SLICE = 8_192  # entries (about 2 MB of reply)
_PARSE_WINDOW = 1 << 20  # bytes first searched for the line ends of a slice


def _parse_slice(
    raw: np.ndarray, data: bytes, starts: np.ndarray, ends: np.ndarray, lengths: np.ndarray
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, bytes] | None:
    """The columns, stream IDs and XACK arguments of some canonical entries, or None."""

    def text(line: int, expected: bytes) -> bool:
        s, n = starts[:, line], lengths[:, line]
        if (n != len(expected)).any():
            return False
        # Lengths differ between the canonical names; first and last bytes settle the rest.
        return bool((raw[s] == expected[0]).all() and (raw[s + n - 1] == expected[-1]).all())

    if not (text(0, b"*2") and text(3, b"*%d" % (2 * len(FIELDS)))):
        return None
    if not all(text(5 + 4 * j, name) for j, name in enumerate(_NAMES)):
        return None
    columns: dict[str, Any] = {}
    for j, name in enumerate(FIELDS):
        s, n = starts[:, 7 + 4 * j], lengths[:, 7 + 4 * j]
        if name in KEY_FIELDS:
            columns[name] = _labels(raw, s, n)
        elif name == "amount":
            columns[name] = _decimals(raw, s, n)
            if columns[name] is None:  # long reprs (1234.5600000000002): let float() read
                try:
                    columns[name] = np.array(
                        [
                            float(data[a : a + b])
                            for a, b in zip(s.tolist(), n.tolist(), strict=True)
                        ],
                        dtype=np.float64,
                    )
                except ValueError:
                    return None
                if not np.isfinite(columns[name]).all():
                    return None  # nan / inf: the entry-by-entry path rejects them by name
        else:
            columns[name] = _integers(raw, s, n)
        if columns[name] is None:
            return None
    ids = _stream_ids(raw, starts[:, 2], lengths[:, 2])
    if ids is None:
        return None
    # XACK arguments: the "$len" and id lines of every entry, copied as they came.
    return columns, ids[0], ids[1], _segments(raw, starts[:, 1], ends[:, 2] + 2)


def _merge_labels(pieces: list[tuple[np.ndarray, list[str]]]) -> tuple[np.ndarray, list[str]]:
    """One (codes, sorted labels) from several, codes renumbered into the union."""
    if len(pieces) == 1:
        return pieces[0]
    labels = sorted({label for _, names in pieces for label in names})
    number = {label: i for i, label in enumerate(labels)}
    codes = [np.array([number[x] for x in names], dtype=np.int64)[c] for c, names in pieces]
    return np.concatenate(codes), labels


# The value parsers below apply Horner's rule one character column at a time: every step is a
# vector as long as the slice, so no (entries x width) digit matrix is ever built. Bytes past
# a value's end are masked out; a byte below '0' wraps around in uint8 and fails "<= 9".


def _column(raw: np.ndarray, s: np.ndarray, k: int) -> np.ndarray:
    return raw.take(s + k, mode="clip")


def _integers(raw: np.ndarray, s: np.ndarray, n: np.ndarray) -> np.ndarray | None:
    """Non-negative decimal integers (at most 18 digits), or None."""
    if len(n) == 0:
        return np.zeros(0, dtype=np.int64)
    if (n < 1).any() or (n > 18).any():
        return None
    value = np.zeros(len(s), dtype=np.int64)
    shortest = int(n.min())
    for k in range(int(n.max())):
        digit = _column(raw, s, k) - np.uint8(48)
        if k < shortest:
            if (digit > 9).any():
                return None
            value = value * 10 + digit
            continue
        inside = k < n
        if (inside & (digit > 9)).any():
            return None
        value = np.where(inside, value * 10 + digit, value)
    return value


def _decimals(raw: np.ndarray, s: np.ndarray, n: np.ndarray) -> np.ndarray | None:
    """Plain decimals like 12.34 (at most 15 significant digits, so exactly rounded)."""
    if len(n) == 0:
        return np.zeros(0, dtype=np.float64)
    if (n < 1).any() or (n > 17).any():
        return None
    mantissa = np.zeros(len(s), dtype=np.int64)
    fraction = np.zeros(len(s), dtype=np.int64)
    dots = np.zeros(len(s), dtype=np.int64)
    for k in range(int(n.max())):
        byte = _column(raw, s, k)
        inside = k < n
        digit = byte - np.uint8(48)
        is_digit = inside & (digit <= 9)
        dot = inside & (byte == ord("."))
        if (inside & ~is_digit & ~dot).any():
            return None
        mantissa = np.where(is_digit, mantissa * 10 + digit, mantissa)
        fraction += is_digit & (dots > 0)
        dots += dot
    if (dots > 1).any() or (n - dots > 15).any():
        return None
    # An integer below 2**53 divided by an exact power of ten: correctly rounded, as float().
    return mantissa.astype(np.float64) / (10.0**fraction)


def _stream_ids(raw: np.ndarray, s: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """(milliseconds, sequence) of stream IDs like 1704067201009-0, or None."""
    hi = np.zeros(len(s), dtype=np.int64)
    lo = np.zeros(len(s), dtype=np.int64)
    hi_digits = np.zeros(len(s), dtype=np.int64)
    lo_digits = np.zeros(len(s), dtype=np.int64)
    dashes = np.zeros(len(s), dtype=np.int64)
    for k in range(int(n.max()) if len(n) else 0):
        byte = _column(raw, s, k)
        inside = k < n
        digit = byte - np.uint8(48)
        is_digit = inside & (digit <= 9)
        dash = inside & (byte == ord("-"))
        if (inside & ~is_digit & ~dash).any():
            return None
        before, after = is_digit & (dashes == 0), is_digit & (dashes == 1)
        hi = np.where(before, hi * 10 + digit, hi)
        lo = np.where(after, lo * 10 + digit, lo)
        hi_digits += before
        lo_digits += after
        dashes += dash
    if (
        (dashes != 1) | (hi_digits < 1) | (hi_digits > 18) | (lo_digits < 1) | (lo_digits > 18)
    ).any():
        return None
    return hi, lo


def _labels(raw: np.ndarray, s: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
    """(codes, sorted labels) of short string values, told apart by length and 8-byte words."""
    width = int(n.max()) if len(n) else 1
    if width > 64 or (n < 1).any():
        return None
    padded = -(-width // 8) * 8
    # One (entries x padded) byte block, zeroed past each value's end, read as uint64 words.
    block = raw.take(s[:, None] + np.arange(padded), mode="clip")
    block[np.arange(padded) >= n[:, None]] = 0
    words = block.view(np.uint64)
    _, codes = np.unique(n, return_inverse=True)
    for column in range(words.shape[1]):
        _, word_codes = np.unique(words[:, column], return_inverse=True)
        _, codes = np.unique(codes * (int(word_codes.max()) + 1) + word_codes, return_inverse=True)
    codes = codes.ravel()
    first = np.unique(codes, return_index=True)[1]
    labels = [
        bytes(raw[a : a + b]).decode(errors="replace")
        for a, b in zip(s[first].tolist(), n[first].tolist(), strict=True)
    ]
    # Codes in label order, as sorting the strings themselves would give.
    rank = np.argsort(np.argsort(np.array(labels, dtype=object)))
    return rank[codes].astype(np.int64), sorted(labels)


def _segments(raw: np.ndarray, start: np.ndarray, stop: np.ndarray) -> bytes:
    """The bytes ``raw[start[i]:stop[i]]`` of every i, concatenated."""
    sizes = stop - start
    offsets = np.cumsum(sizes) - sizes
    index_type = np.int32 if len(raw) < (1 << 31) else np.int64
    positions = np.arange(int(sizes.sum()), dtype=index_type)
    positions += np.repeat((start - offsets).astype(index_type), sizes)
    return raw[positions].tobytes()


@dataclass
class ParsedEntries:
    """Canonical entries already parsed into numpy columns."""

    id_hi: np.ndarray
    id_lo: np.ndarray
    columns: dict[str, Any]
    ack_args: bytes
    count: int
