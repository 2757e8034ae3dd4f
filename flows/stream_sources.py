"""Transaction event sources behind one small interface, and a producer for Redis Streams.

Pure logic without prefect. Two sources:

* :class:`EmbeddedSource` replays a fraud_synth dataset (see fraud-schema: files listed in
  ``manifest.json``, each in time order) as a stream; the stream ID of an event is
  (file index, row in file).
* :class:`RedisStreamSource` reads a Redis stream through a consumer group: XAUTOCLAIM first
  takes over what a dead consumer left pending, then XREADGROUP reads new entries in
  batches; entries are acknowledged (XACK) only after the sink committed them. Stream IDs are
  Redis' own (milliseconds, sequence).

Redis replies are parsed by a small RESP reader with a compiled-regex fast path for entries
written in the canonical field order: redis-py's pure-Python parser manages about 27 k
entries/s here, too slow for a 100 k events/s target.

``python -m flows.stream_sources produce DATASET --redis URL --stream KEY --rate N`` replays a
dataset into a stream at a given rate (events/s; 0 = as fast as possible).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from headroom.errors import BadInput

log = logging.getLogger(__name__)

# The flat fields of one stream entry, in the order the producer writes them.
FIELDS = (
    "transaction_id",
    "ts",
    "customer_id",
    "merchant_category",
    "channel",
    "amount",
    "is_fraud",
)
KEY_FIELDS = ("merchant_category", "channel")
DEFAULT_STREAM = "fraud:transactions"
DEFAULT_GROUP = "stream-stats"
READ_CHUNK = 32_768  # entries per XREADGROUP: a micro-batch takes several, pipelined


# ---------------------------------------------------------------------------------------------
# One micro-batch of events, columnar


@dataclass
class EventBatch:
    """Events in stream order as numpy columns; key fields dictionary-encoded."""

    id_hi: np.ndarray
    id_lo: np.ndarray
    ts: np.ndarray
    customer_id: np.ndarray
    amount: np.ndarray
    is_fraud: np.ndarray
    keys: dict[str, tuple[np.ndarray, list[str]]]
    ack: bytes | None = None  # the source's acknowledgement (Redis: XACK commands)
    ack_replies: int = 1  # commands in ``ack``, each answered once
    rejects: list[tuple[str, str]] = field(default_factory=list)
    last: tuple[int, int] | None = None
    transaction_id: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ts)

    def last_id(self) -> tuple[int, int] | None:
        """The highest stream ID this batch consumed (rejected entries included)."""
        if self.last is not None:
            return self.last
        if len(self.ts) == 0:
            return None
        return int(self.id_hi[-1]), int(self.id_lo[-1])

    def after(self, last: tuple[int, int]) -> EventBatch:
        """The events whose stream ID is above ``last`` (already applied ones dropped)."""
        hi, lo = last
        keep = (self.id_hi > hi) | ((self.id_hi == hi) & (self.id_lo > lo))
        if keep.all():
            return self
        return EventBatch(
            self.id_hi[keep],
            self.id_lo[keep],
            self.ts[keep],
            self.customer_id[keep],
            self.amount[keep],
            self.is_fraud[keep],
            {k: (codes[keep], labels) for k, (codes, labels) in self.keys.items()},
            self.ack,
            self.rejects,
            self.last_id(),
            None if self.transaction_id is None else self.transaction_id[keep],
        )

    def key_combos(self, names: tuple[str, ...]) -> tuple[np.ndarray, list[tuple[str, ...]]]:
        """(one combined code per event, the key tuple of each code): mixed radix."""
        combo = np.zeros(len(self.ts), dtype=np.int64)
        decode: list[tuple[str, ...]] = [()]
        for name in names:
            codes, labels = self.keys[name]
            combo = combo * len(labels) + codes
            decode = [d + (label,) for d in decode for label in labels]
        return combo, decode


def concat_batches(batches: list[EventBatch]) -> EventBatch:
    """One batch of several read back to back; key codes renumbered into the union of labels."""
    if len(batches) == 1:
        return batches[0]
    keys = {}
    for name in batches[0].keys:
        labels = sorted({label for b in batches for label in b.keys[name][1]})
        number = {label: i for i, label in enumerate(labels)}
        codes = [
            np.array([number[x] for x in b.keys[name][1]], dtype=np.int64)[b.keys[name][0]]
            for b in batches
        ]
        keys[name] = (np.concatenate(codes), labels)
    lasts = [last for b in batches if (last := b.last_id()) is not None]
    transaction_ids = [b.transaction_id for b in batches]
    return EventBatch(
        *(np.concatenate([getattr(b, f) for b in batches]) for f in _EVENT_COLUMNS),
        keys,
        ack=b"".join(b.ack or b"" for b in batches),
        ack_replies=sum(b.ack_replies for b in batches if b.ack),
        rejects=[r for b in batches for r in b.rejects],
        last=max(lasts, default=None),
        transaction_id=None
        if any(t is None for t in transaction_ids)
        else np.concatenate(transaction_ids),
    )


_EVENT_COLUMNS = ("id_hi", "id_lo", "ts", "customer_id", "amount", "is_fraud")


def batch_from_columns(
    id_hi: np.ndarray, id_lo: np.ndarray, columns: dict[str, Any], **extra: Any
) -> EventBatch:
    """An :class:`EventBatch` from Arrow or numpy columns named as in :data:`FIELDS`."""
    keys = {}
    for name in KEY_FIELDS:
        keys[name] = _encode(columns[name])
    return EventBatch(
        np.asarray(id_hi, dtype=np.int64),
        np.asarray(id_lo, dtype=np.int64),
        _as_ms(columns["ts"]),
        _numbers(columns["customer_id"], np.int64),
        _numbers(columns["amount"], np.float64),
        _numbers(columns["is_fraud"], bool),
        keys,
        transaction_id=_numbers(columns["transaction_id"], np.int64),
        **extra,
    )


def _numbers(column: Any, dtype: Any) -> np.ndarray:
    """A numpy column; Arrow ones are viewed in place (see flows.stream_arrow for why)."""
    if isinstance(column, np.ndarray | list | tuple):
        return np.asarray(column, dtype=dtype)
    from flows.stream_arrow import view

    values = view(column)
    if values is None:  # nulls or an unusual type: pyarrow's own conversion
        return np.asarray(column, dtype=dtype)
    return np.asarray(values, dtype=dtype)


def _as_ms(column: Any) -> np.ndarray:
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray | pa.Array):
        from flows.stream_arrow import view

        values = view(column)
        if values is not None and not pa.types.is_boolean(column.type):
            return values if pa.types.is_timestamp(column.type) else values.astype(np.int64)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.timestamp("ms", tz=column.type.tz)).cast(pa.int64())
        return column.to_numpy()
    return np.asarray(column, dtype=np.int64)


def _encode(column: Any) -> tuple[np.ndarray, list[str]]:
    """(codes, labels) of a string or dictionary column."""
    import pyarrow as pa

    if isinstance(column, tuple):  # already (codes, labels)
        return column
    if isinstance(column, list):  # raw values from a stream: codes by first appearance
        seen: dict[Any, int] = {}
        codes = np.fromiter((seen.setdefault(v, len(seen)) for v in column), np.int64, len(column))
        return codes, [v.decode() if isinstance(v, bytes) else str(v) for v in seen]
    if isinstance(column, np.ndarray):
        labels, codes = np.unique(column, return_inverse=True)
        return codes.astype(np.int64), [
            x.decode() if isinstance(x, bytes) else str(x) for x in labels.tolist()
        ]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_dictionary(column.type):
        import pyarrow.compute as pc

        column = pc.dictionary_encode(column)
    if column.null_count:
        raise BadInput(f"a key column has {column.null_count} null values")
    from flows.stream_arrow import labels, view

    codes = view(column.indices)
    dictionary = column.dictionary
    if codes is None or not pa.types.is_string(dictionary.type) or dictionary.null_count:
        return (
            column.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            dictionary.cast(pa.string()).to_pylist(),
        )
    return codes.astype(np.int64), labels(dictionary)


class Source(Protocol):
    """A stream of transaction events: read micro-batches, acknowledge committed ones."""

    name: str

    def start(self, after: tuple[int, int]) -> None:
        """Position the source just after the last committed stream ID."""

    def read(self, max_events: int, block_ms: int) -> EventBatch | None:
        """Up to ``max_events`` events in stream order; None when there is nothing (yet)."""

    def ack(self, batch: EventBatch) -> None:
        """The batch is committed: the source may forget it."""

    def lag(self) -> dict[str, Any]:
        """How far behind the consumer is."""

    def close(self) -> None:
        """Release connections and files."""


def open_source(spec: str) -> Source:
    """The source a ``source`` parameter names: redis://... or a dataset directory."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStreamSource(spec)
    return EmbeddedSource(spec.removeprefix("embedded:"))


# ---------------------------------------------------------------------------------------------
# Embedded: a fraud_synth dataset as a stream


def load_manifest(dataset: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The complete transaction files of a dataset, in index (= event-time) order."""
    path = Path(dataset) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"parameter source: {dataset} has no manifest.json") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON ({exc})") from None
    files = manifest.get("files")
    if not isinstance(files, list) or any("path" not in f or "index" not in f for f in files):
        raise BadInput(f"{path}: 'files' must list objects with 'index' and 'path'")
    return sorted(files, key=lambda f: int(f["index"]))


class EmbeddedSource:
    """A fraud_synth dataset replayed in manifest order; IDs are (file index, row)."""

    COLUMNS = list(FIELDS)

    def __init__(self, dataset: str | os.PathLike[str]) -> None:
        self.dataset = Path(dataset)
        self.name = f"embedded:{self.dataset.resolve()}"
        self.files = load_manifest(self.dataset)
        self._position = 0  # index into self.files
        self._row = 0  # next row in that file
        self._reader: Any = None
        self._reader_file = -1
        self._pending: Any = None  # rows read from the file but not yet handed out

    def start(self, after: tuple[int, int]) -> None:
        hi, lo = after
        self._position = next(
            (i for i, f in enumerate(self.files) if int(f["index"]) >= hi), len(self.files)
        )
        if self._position < len(self.files) and int(self.files[self._position]["index"]) == hi:
            self._row = lo + 1
        else:
            self._row = 0

    def _open(self) -> Any:
        import pyarrow.parquet as pq

        entry = self.files[self._position]
        path = self.dataset / entry["path"]
        try:
            parquet = pq.ParquetFile(path)
        except (FileNotFoundError, OSError) as exc:
            raise BadInput(f"{path}: listed in the manifest but unreadable ({exc})") from None
        missing = [c for c in self.COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise BadInput(f"{path}: missing columns {missing}")
        return parquet

    def read(self, max_events: int, block_ms: int = 0) -> EventBatch | None:
        import pyarrow as pa

        pieces, ids_hi, ids_lo, taken = [], [], [], 0
        while taken < max_events and self._position < len(self.files):
            if self._reader_file != self._position:
                self._reader = self._open().iter_batches(batch_size=65_536, columns=self.COLUMNS)
                self._reader_file, self._pending, self._next_row = self._position, None, 0
            if self._pending is None:
                record = next(self._reader, None)
                if record is None:
                    self._position += 1
                    self._row = 0
                    continue
                self._pending, self._pending_first = record, self._next_row
                self._next_row += record.num_rows
            # Rows at or below the committed position are skipped.
            skip = max(0, self._row - self._pending_first)
            if skip >= self._pending.num_rows:
                self._pending = None
                continue
            piece = self._pending.slice(skip, max_events - taken)
            first = self._pending_first + skip
            index = int(self.files[self._position]["index"])
            pieces.append(piece)
            ids_hi.append(np.full(piece.num_rows, index, dtype=np.int64))
            ids_lo.append(np.arange(first, first + piece.num_rows, dtype=np.int64))
            taken += piece.num_rows
            self._row = first + piece.num_rows
            if self._row >= self._pending_first + self._pending.num_rows:
                self._pending = None
        if not pieces:
            return None
        table = pa.Table.from_batches(pieces).unify_dictionaries().combine_chunks()
        columns = {name: table.column(name) for name in FIELDS}
        return batch_from_columns(np.concatenate(ids_hi), np.concatenate(ids_lo), columns)

    def ack(self, batch: EventBatch) -> None:
        pass

    def lag(self) -> dict[str, Any]:
        left = sum(int(f.get("rows", 0)) for f in self.files[self._position :]) - self._row
        return {"remaining_events": max(0, left)}

    def close(self) -> None:
        self._reader = None


MERCHANT_CATEGORIES = (
    "grocery_pos",
    "gas_transport",
    "shopping_net",
    "shopping_pos",
    "food_dining",
    "health_fitness",
    "travel",
    "entertainment",
    "home",
    "kids_pets",
    "personal_care",
    "misc_pos",
    "misc_net",
    "grocery_net",
)
CHANNELS = ("pos", "online", "contactless", "atm")


def synthetic_events(
    transactions: int,
    seed: int = 0,
    start_ms: int = 1_704_067_200_000,
    span_ms: int = 86_400_000,
    customers: int = 5_000,
    disorder_ms: int = 0,
) -> dict[str, np.ndarray]:
    """Transactions in the fraud_synth columns (for tests and benchmarks without the generator).

    ``disorder_ms`` jitters event times after sorting, so the stream arrives out of order.
    """
    rng = np.random.default_rng(seed)
    ts = start_ms + np.sort(rng.integers(0, span_ms, transactions))
    if disorder_ms:
        ts = ts + rng.integers(-disorder_ms, disorder_ms + 1, transactions)
    return {
        "transaction_id": np.arange(transactions, dtype=np.int64) + 1,
        "ts": ts,
        "customer_id": rng.integers(1, customers + 1, transactions),
        "merchant_category": np.array(MERCHANT_CATEGORIES)[
            rng.integers(0, len(MERCHANT_CATEGORIES), transactions)
        ],
        "channel": np.array(CHANNELS)[rng.integers(0, len(CHANNELS), transactions)],
        "amount": np.round(rng.gamma(2.0, 35.0, transactions) + 0.5, 2),
        "is_fraud": rng.random(transactions) < 0.008,
    }


def fraud_dataset(
    out_dir: str | os.PathLike[str], transactions: int, seed: int = 0, files: int = 2, days: int = 1
) -> Path:
    """A fraud_synth dataset: the real generator when present, else :func:`synthetic_events`."""
    from datetime import date, timedelta

    out = Path(out_dir)
    try:
        from flows.fraud_synth_gen import generate_dataset_local
    except ImportError:
        generate_dataset_local = None
    if generate_dataset_local is not None:
        start = date(2024, 1, 1)  # whole days; the end day is included
        generate_dataset_local(
            out,
            transactions=transactions,
            seed=seed,
            start=start,
            end=start + timedelta(days=max(1, days) - 1),
            files=files,
        )
    else:
        write_events_dataset(
            out, synthetic_events(transactions, seed, span_ms=max(1, days) * 86_400_000), files
        )
    return out


def read_events(dataset: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every event of a dataset as a dict, in stream order (for checks and the baseline)."""
    source = EmbeddedSource(dataset)
    source.start((-1, -1))
    events: list[dict[str, Any]] = []
    while (batch := source.read(1 << 20)) is not None:
        labels = {k: batch.keys[k][1] for k in KEY_FIELDS}
        codes = {k: batch.keys[k][0].tolist() for k in KEY_FIELDS}
        for i, (ts, customer, amount, fraud) in enumerate(
            zip(
                batch.ts.tolist(),
                batch.customer_id.tolist(),
                batch.amount.tolist(),
                batch.is_fraud.tolist(),
                strict=True,
            )
        ):
            events.append(
                {
                    "ts": ts,
                    "customer_id": customer,
                    "amount": amount,
                    "is_fraud": fraud,
                    **{k: labels[k][codes[k][i]] for k in labels},
                }
            )
    return events


def write_events_dataset(
    out_dir: str | os.PathLike[str], events: dict[str, Any], files: int = 1
) -> dict[str, Any]:
    """Write events (columns by name, in stream order) as a fraud_synth-layout dataset.

    For replays of captured events and for tests that need a chosen order (late or
    out-of-order events); the rows keep the given order, split into ``files`` parts.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    (out / "transactions").mkdir(parents=True, exist_ok=True)
    n = len(events["ts"])
    strings = pa.dictionary(pa.int32(), pa.string())
    columns = {
        "transaction_id": pa.array(events.get("transaction_id", np.arange(n)), pa.int64()),
        "ts": pa.array(np.asarray(events["ts"], dtype=np.int64), pa.int64()).cast(
            pa.timestamp("ms", tz="UTC")
        ),
        "customer_id": pa.array(events["customer_id"], pa.int64()),
        "device_id": pa.array(events.get("device_id", np.zeros(n, np.int64)), pa.int64()),
        "merchant_id": pa.array(events.get("merchant_id", np.zeros(n, np.int64)), pa.int64()),
        "merchant_category": pa.array(events["merchant_category"], pa.string()).cast(strings),
        "channel": pa.array(events["channel"], pa.string()).cast(strings),
        "amount": pa.array(events["amount"], pa.float64()),
        "latitude": pa.array(events.get("latitude", np.zeros(n)), pa.float32()),
        "longitude": pa.array(events.get("longitude", np.zeros(n)), pa.float32()),
        "is_fraud": pa.array(events["is_fraud"], pa.bool_()),
        "fraud_scenario": pa.array(events.get("fraud_scenario", ["none"] * n), pa.string()).cast(
            strings
        ),
    }
    table = pa.table(columns)
    entries = []
    bounds = np.linspace(0, n, files + 1).astype(int)
    for index in range(files):
        part = table.slice(bounds[index], bounds[index + 1] - bounds[index])
        relative = f"transactions/part-{index:05d}.parquet"
        pq.write_table(part, out / relative)
        ts = np.asarray(events["ts"][bounds[index] : bounds[index + 1]], dtype=np.int64)
        entries.append(
            {
                "index": index,
                "path": relative,
                "rows": part.num_rows,
                "bytes": (out / relative).stat().st_size,
                "min_ts": int(ts.min()) if len(ts) else None,
                "max_ts": int(ts.max()) if len(ts) else None,
                "fraud": {},
                "checksum": "",
            }
        )
    manifest = {"seed": None, "start": None, "end": None, "files": entries, "schema_version": 1}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# ---------------------------------------------------------------------------------------------
# A minimal RESP2 connection (raw socket) with a fast path for stream entries


class RespError(Exception):
    """An error reply from Redis."""


class _Incomplete(Exception):
    pass


def _encode_command(*args: Any) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _entry_pattern(fields: tuple[str, ...]) -> re.Pattern[bytes]:
    body = b"".join(
        rb"\$\d+\r\n" + re.escape(name.encode()) + rb"\r\n\$\d+\r\n([^\r\n]*)\r\n"
        for name in fields
    )
    return re.compile(rb"\*2\r\n\$\d+\r\n(\d+-\d+)\r\n\*%d\r\n" % (2 * len(fields)) + body)


_ENTRY = _entry_pattern(FIELDS)


class RespConnection:
    """One Redis connection speaking RESP2 over a socket."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        parsed = urlparse(url)
        self.timeout_s = timeout_s
        self.sock = socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=timeout_s
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        if parsed.password:
            auth = (
                [unquote(parsed.username), unquote(parsed.password)]
                if parsed.username
                else [unquote(parsed.password)]
            )
            self.command("AUTH", *auth)
        db = (parsed.path or "/0").strip("/").split("/")[0] or "0"
        if db != "0":
            self.command("SELECT", db)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        if self.pos > (1 << 20) and self.pos > len(self.buf) // 2:
            del self.buf[: self.pos]
            self.pos = 0
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = bytes(self.buf[self.pos : end])
                self.pos = end + 2
                return line
            self._fill()

    def read_reply(self) -> Any:
        """One complete reply (nested lists, bytes, ints, None)."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self.buf) < self.pos + size + 2:
                self._fill()
            data = bytes(self.buf[self.pos : self.pos + size])
            self.pos += size + 2
            return data
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.read_reply() for _ in range(size)]
        raise RespError(f"unexpected reply {line[:40]!r}")

    def command(self, *args: Any) -> Any:
        self.send(_encode_command(*args))
        return self.read_reply()

    def read_entries(self, count: int) -> Entries | ParsedEntries:
        """The ``count`` entries of a stream reply whose header was read, as columns.

        Fast path: entries in the canonical field order whose values hold no line break are
        exactly ``_LINES_PER_ENTRY`` lines each, so numpy reads the columns straight from the
        reply (:func:`parse_canonical`). Anything else (other order, extra fields, deleted
        entries) goes through the generic parser, entry by entry.
        """
        need = count * _LINES_PER_ENTRY
        seen, scanned = 0, self.pos
        patience = 0.1
        while True:
            seen += self.buf.count(b"\r\n", scanned)
            scanned = max(scanned, len(self.buf) - 1)  # a CRLF may straddle two reads
            if seen >= need:
                break
            seen -= self.buf.count(b"\r\n", scanned)
            if self._wait(patience):
                self._fill_keeping()
                continue
            # Silence: the reply is shorter than canonical entries make it, or Redis is busy
            # (a large XACK, a loaded machine). Only a canonical start is worth waiting on,
            # and not for ever: the generic parser reads any reply, only slower.
            whole = seen // _LINES_PER_ENTRY
            if patience > _PATIENCE_S or whole == 0 or not self._canonical_start(whole):
                return self._generic_entries(count)
            patience *= 2
        # Nothing follows the reply in the buffer: one command is outstanding at a time.
        data = bytes(memoryview(self.buf)[self.pos :])  # one copy, not two
        parsed = parse_canonical(data, count)
        if parsed is not None:
            self.pos = len(self.buf)
            return parsed
        rows = _ENTRY.findall(self.buf, self.pos)
        if len(rows) != count:
            return self._generic_entries(count)
        self.pos = len(self.buf)
        columns = list(zip(*rows, strict=True))
        return Entries(
            list(columns[0]), {name: list(columns[1 + j]) for j, name in enumerate(FIELDS)}, []
        )

    def _canonical_start(self, entries: int) -> bool:
        """Whether the first ``entries`` entries of the reply, all received, are canonical."""
        return parse_canonical(bytes(memoryview(self.buf)[self.pos :]), entries) is not None

    def _fill_keeping(self) -> None:
        """Read more without compacting the buffer (positions into it stay valid)."""
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self.buf += chunk

    def _wait(self, timeout_s: float) -> bool:
        import select

        return bool(select.select([self.sock], [], [], timeout_s)[0])

    def _generic_entries(self, count: int) -> Entries:
        entries = Entries([], {name: [] for name in FIELDS}, [])
        for _ in range(count):
            entries.add(self.read_reply())
        return entries


_LINES_PER_ENTRY = 4 + 4 * len(FIELDS)
_PATIENCE_S = 1.0  # a canonical reply's silences are waited out to 3 s in all (0.1 s doubling)
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


@dataclass
class Entries:
    """Stream entries as columns of raw values, plus entries that could not be read."""

    ids: list[bytes]
    values: dict[str, list[bytes]]
    rejects: list[tuple[str, str]]
    acked: list[bytes] = field(default_factory=list)

    def add(self, entry: Any) -> None:
        """One entry as the generic parser returns it: [id, [field, value, ...]] or None."""
        if entry is None:
            return
        entry_id, values = entry
        if values is None:
            self.acked.append(entry_id)
            self.rejects.append((entry_id.decode(), "deleted from the stream"))
            return
        mapping = dict(zip(values[::2], values[1::2], strict=False))
        missing = [name for name in FIELDS if name.encode() not in mapping]
        if missing:
            self.acked.append(entry_id)
            self.rejects.append((entry_id.decode(), f"missing fields {missing}"))
            return
        self.ids.append(entry_id)
        for name in FIELDS:
            self.values[name].append(mapping[name.encode()])

    def ack_command(self, stream: str, group: str) -> bytes:
        """XACK for every entry here, rejected ones included, built without a Python loop."""
        ids = self.ids + self.acked
        lengths = [b"$%d" % len(i) for i in ids]
        head = _encode_command("XACK", stream, group)
        interleaved: list[bytes] = [b""] * (2 * len(ids))
        interleaved[0::2] = lengths
        interleaved[1::2] = ids
        return (
            b"*%d\r\n" % (3 + len(ids))
            + head.split(b"\r\n", 1)[1]
            + b"\r\n".join(interleaved)
            + b"\r\n"
        )


# ---------------------------------------------------------------------------------------------
# Redis Streams


def parse_redis_source(url: str) -> tuple[str, str, str]:
    """(connection url, stream key, group) from redis://host:port/db?stream=KEY&group=NAME."""
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    stream = query.get("stream", [DEFAULT_STREAM])[0]
    group = query.get("group", [DEFAULT_GROUP])[0]
    if not stream or not group:
        raise BadInput(f"parameter source: {url!r} needs a non-empty stream and group")
    return parsed._replace(query="").geturl(), stream, group


class RedisStreamSource:
    """A Redis stream read through a consumer group, one consumer per process."""

    def __init__(self, url: str, consumer: str | None = None) -> None:
        self.url, self.stream, self.group = parse_redis_source(url)
        self.name = f"redis:{self.stream}:{self.group}"
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.conn = RespConnection(self.url)  # control: group, claims, XACK, lag
        self.reader = RespConnection(self.url)  # XREADGROUP only, one request ahead
        self._claim_cursor: bytes | None = b"0-0"
        self._ahead: int | None = None  # entries asked for by the XREADGROUP in flight
        self._ack_unread = 0  # XACKs sent whose replies are still to be read

    def start(self, after: tuple[int, int]) -> None:
        try:
            self.conn.command("XGROUP", "CREATE", self.stream, self.group, "0", "MKSTREAM")
        except RespError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._claim_cursor = b"0-0"

    def read(self, max_events: int, block_ms: int = 1000) -> EventBatch | None:
        """Entries a dead consumer left pending first (XAUTOCLAIM), then new ones."""
        if self._claim_cursor is not None:
            batch = self._claim(max_events)
            if batch is not None:
                return batch
        # A micro-batch is read in chunks, each asked for before the one before it is parsed,
        # so that Redis builds one reply while this process parses another. The request left
        # outstanding at the end is the next batch's first: Redis builds it while this batch
        # is aggregated; if the run ends first, its entries stay pending and the next run
        # claims them.
        if self._ahead is None:
            self._request(min(max_events, READ_CHUNK), block_ms)
        batches: list[EventBatch] = []
        taken = 0
        while self._ahead is not None:
            asked = self._ahead
            self._ahead = None
            got, entries = self._receive()
            if entries is None:
                break
            taken += got
            more = got >= asked and taken < max_events  # a full reply: more may be waiting
            if more:
                self._request(min(READ_CHUNK, max_events - taken), None)
            else:
                self._request(min(max_events, READ_CHUNK), block_ms)
            batches.append(self._to_batch(entries))
            if not more:
                break
        return concat_batches(batches) if batches else None

    def _request(self, count: int, block_ms: int | None) -> None:
        """XREADGROUP for up to ``count`` new entries; without ``block_ms``, none is no wait."""
        block = [] if block_ms is None else ["BLOCK", max(1, block_ms)]
        self.reader.send(
            _encode_command(
                "XREADGROUP",
                "GROUP",
                self.group,
                self.consumer,
                "COUNT",
                count,
                *block,
                "STREAMS",
                self.stream,
                ">",
            )
        )
        self._ahead = count

    def _receive(self) -> tuple[int, Entries | ParsedEntries | None]:
        """(entries in the reply, the entries) of the XREADGROUP in flight."""
        header = self.reader._line()
        if header.startswith(b"-"):
            raise RespError(header[1:].decode(errors="replace"))
        if header in (b"*-1", b"*0"):
            return 0, None
        # *1, then *2 [stream name, *N entries]
        self.reader._line()
        self.reader.read_reply()
        count = int(self.reader._line()[1:])
        return count, self.reader.read_entries(count)

    def _claim(self, max_events: int) -> EventBatch | None:
        """Take over every pending entry of the group: only one consumer runs per sink."""
        self._settle_ack()
        reply = self.conn.command(
            "XAUTOCLAIM",
            self.stream,
            self.group,
            self.consumer,
            "0",
            self._claim_cursor,
            "COUNT",
            max_events,
        )
        cursor, claimed = reply[0], reply[1]
        self._claim_cursor = None if cursor == b"0-0" else cursor
        entries = Entries([], {name: [] for name in FIELDS}, [])
        for entry in claimed:
            entries.add(entry)
        if len(reply) > 2 and reply[2]:
            log.warning(
                "%d pending entries of %s were deleted from the stream before being processed",
                len(reply[2]),
                self.stream,
            )
        if self._claim_cursor is None:
            self._forget_dead_consumers()
        if not entries.ids and not entries.rejects:
            return None if self._claim_cursor is None else self._claim(max_events)
        log.info("claimed %d pending entries of %s", len(entries.ids), self.stream)
        return self._to_batch(entries)

    def _forget_dead_consumers(self) -> None:
        for info in self.conn.command("XINFO", "CONSUMERS", self.stream, self.group):
            fields = dict(zip(info[::2], info[1::2], strict=False))
            name = fields.get(b"name", b"").decode()
            if name != self.consumer and int(fields.get(b"pending", 0)) == 0:
                self.conn.command("XGROUP", "DELCONSUMER", self.stream, self.group, name)

    def _to_batch(self, entries: Entries | ParsedEntries) -> EventBatch:
        """Numpy columns from raw values; entries whose values do not parse become rejects."""
        if isinstance(entries, ParsedEntries):
            head = _encode_command("XACK", self.stream, self.group)
            ack = b"*%d\r\n" % (3 + entries.count) + head.split(b"\r\n", 1)[1] + entries.ack_args
            columns = dict(entries.columns)
            columns["is_fraud"] = columns["is_fraud"] != 0
            return batch_from_columns(entries.id_hi, entries.id_lo, columns, ack=ack)
        try:
            columns = _columns(entries.values)
        except ValueError:
            columns = None
        bad = _unparseable(entries, columns)
        if bad:
            keep = [i for i in range(len(entries.ids)) if i not in bad]
            for i, reason in sorted(bad.items()):
                entries.rejects.append((entries.ids[i].decode(), reason))
                entries.acked.append(entries.ids[i])
            entries.ids = [entries.ids[i] for i in keep]
            entries.values = {k: [v[i] for i in keep] for k, v in entries.values.items()}
            columns = _columns(entries.values)
        for entry_id, reason in entries.rejects:
            log.warning("stream %s entry %s rejected: %s", self.stream, entry_id, reason)
        every = [_split_id(i) for i in entries.acked]
        ids = b"\n".join(entries.ids).replace(b"-", b"\n").split(b"\n") if entries.ids else []
        id_hi = np.array(list(map(int, ids[0::2])), dtype=np.int64)
        id_lo = np.array(list(map(int, ids[1::2])), dtype=np.int64)
        if len(id_hi):
            every.append((int(id_hi[-1]), int(id_lo[-1])))
        return batch_from_columns(
            id_hi,
            id_lo,
            columns,
            rejects=entries.rejects,
            last=max(every, default=None),
            ack=entries.ack_command(self.stream, self.group),
        )

    def ack(self, batch: EventBatch) -> None:
        # Pipelined: the next batch is parsed while Redis works through the IDs. The reply is
        # read before the connection's next command; a crash before that leaves the entries
        # pending, to be claimed and skipped as already committed.
        if batch.ack:
            self._settle_ack()
            self.conn.send(batch.ack)
            self._ack_unread = batch.ack_replies

    def _settle_ack(self) -> None:
        while self._ack_unread:
            self._ack_unread -= 1
            self.conn.read_reply()

    def lag(self) -> dict[str, Any]:
        self._settle_ack()
        length = self.conn.command("XLEN", self.stream)
        for info in self.conn.command("XINFO", "GROUPS", self.stream):
            fields = dict(zip(info[::2], info[1::2], strict=False))
            if fields.get(b"name") == self.group.encode():
                return {
                    "stream_length": length,
                    "pending": fields.get(b"pending"),
                    "lag": fields.get(b"lag"),
                }
        return {"stream_length": length}

    def close(self) -> None:
        try:
            self._settle_ack()
        except (OSError, RespError) as exc:  # the entries stay pending: claimed next run
            log.warning("stream %s: last XACK unconfirmed (%s)", self.stream, exc)
        self.conn.close()
        self.reader.close()


def _split_id(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


_NUMERIC = (
    ("transaction_id", int),
    ("ts", int),
    ("customer_id", int),
    ("amount", float),
    ("is_fraud", int),
)


def _columns(values: dict[str, list[bytes]]) -> dict[str, Any]:
    """Typed columns from raw entry values (ValueError if one does not parse)."""
    columns: dict[str, Any] = {
        name: np.array(
            list(map(convert, values[name])), np.float64 if convert is float else np.int64
        )
        for name, convert in _NUMERIC
    }
    columns["is_fraud"] = columns["is_fraud"] != 0
    for name in KEY_FIELDS:
        columns[name] = values[name]
    return columns


def _unparseable(entries: Entries, columns: dict[str, Any] | None) -> dict[int, str]:
    """{entry index: reason} for values that are not (finite) numbers where numbers belong."""
    bad: dict[int, str] = {}
    if columns is not None:
        for i in np.flatnonzero(~np.isfinite(columns["amount"])).tolist():
            bad[i] = f"field amount: {entries.values['amount'][i][:40]!r} is not finite"
        return bad
    for name, convert in _NUMERIC:
        for i, value in enumerate(entries.values[name]):
            try:
                convert(value)
            except ValueError:
                bad.setdefault(i, f"field {name}: {value[:40]!r} is not a number")
    return bad


# ---------------------------------------------------------------------------------------------
# Producer: replay a dataset into a stream


def produce(
    dataset: str | os.PathLike[str],
    redis_url: str,
    stream: str = DEFAULT_STREAM,
    rate: float = 0.0,
    max_events: int | None = None,
    chunk: int = 5_000,
    maxlen: int | None = None,
) -> dict[str, Any]:
    """XADD a dataset's transactions to ``stream`` in event-time order at ``rate`` events/s."""
    source = EmbeddedSource(dataset)
    source.start((-1, -1))
    conn = RespConnection(redis_url)
    started = time.perf_counter()
    sent = 0
    trim = [b"MAXLEN", b"~", str(maxlen).encode()] if maxlen else []
    try:
        while max_events is None or sent < max_events:
            want = chunk if max_events is None else min(chunk, max_events - sent)
            batch = source.read(want)
            if batch is None:
                break
            sent += xadd_batch(conn, stream, batch, trim)
            if rate > 0:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        conn.close()
    seconds = time.perf_counter() - started
    return {
        "events": sent,
        "seconds": round(seconds, 3),
        "events_per_s": round(sent / seconds, 1) if seconds else 0.0,
    }


def xadd_batch(
    conn: RespConnection, stream: str, batch: EventBatch, trim: list[bytes] | None = None
) -> int:
    """Pipeline one XADD per event (canonical field order); returns how many were added."""
    # XADD key [MAXLEN ~ n] * field value ...: everything before the fields is fixed.
    prefix = _encode_command("XADD", stream, *(trim or []), "*")
    head = b"*%d\r\n" % (3 + len(trim or []) + 2 * len(FIELDS)) + prefix.split(b"\r\n", 1)[1]
    labels = {k: [label.encode() for label in batch.keys[k][1]] for k in KEY_FIELDS}
    columns = [
        [str(x).encode() for x in batch.transaction_id.tolist()],
        [str(x).encode() for x in batch.ts.tolist()],
        [str(x).encode() for x in batch.customer_id.tolist()],
        [labels["merchant_category"][c] for c in batch.keys["merchant_category"][0].tolist()],
        [labels["channel"][c] for c in batch.keys["channel"][0].tolist()],
        [repr(x).encode() for x in batch.amount.tolist()],
        [b"1" if x else b"0" for x in batch.is_fraud.tolist()],
    ]
    names = [b"$%d\r\n%s\r\n" % (len(f), f.encode()) for f in FIELDS]
    parts = []
    for values in zip(*columns, strict=True):
        parts.append(head)
        for name, value in zip(names, values, strict=True):
            parts.append(name)
            parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
    conn.send(b"".join(parts))
    for _ in range(len(batch)):
        conn.read_reply()
    return len(batch)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``produce`` a dataset into a Redis stream."""
    parser = argparse.ArgumentParser(prog="python -m flows.stream_sources")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("produce", help="replay a fraud_synth dataset into a stream")
    cmd.add_argument("dataset", help="dataset directory with manifest.json")
    cmd.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    cmd.add_argument("--stream", default=DEFAULT_STREAM)
    cmd.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as possible)")
    cmd.add_argument("--max-events", type=int, default=None)
    cmd.add_argument("--maxlen", type=int, default=None, help="approximate stream cap")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = produce(
        args.dataset, args.redis, args.stream, args.rate, args.max_events, maxlen=args.maxlen
    )
    log.info("produced %s", json.dumps(result))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
