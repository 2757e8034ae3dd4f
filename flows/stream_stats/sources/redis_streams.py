"""The Redis Streams source: a stream read through a consumer group.

Pure logic without prefect. XAUTOCLAIM first takes over what a dead consumer left pending,
then XREADGROUP reads new entries in batches; entries are acknowledged (XACK) only after the
sink committed them. Stream IDs are Redis' own (milliseconds, sequence).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import numpy as np

from flows.stream_stats.events import (
    FIELDS,
    KEY_FIELDS,
    EventBatch,
    batch_from_columns,
    concat_batches,
)
from flows.stream_stats.sources.resp import (
    Entries,
    RespConnection,
    RespError,
    _encode_command,
    xack_head,
)
from flows.stream_stats.sources.resp_bulk import ParsedEntries
from headroom.errors import BadInput

log = logging.getLogger(__name__)


DEFAULT_STREAM = "fraud:transactions"
DEFAULT_GROUP = "stream-stats"
READ_CHUNK = 32_768  # entries per XREADGROUP: a micro-batch takes several, pipelined


def parse_redis_source(url: str) -> tuple[str, str, str]:
    """(connection url, stream key, group) from redis://host:port/db?stream=KEY&group=NAME."""
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    stream = query.get("stream", [DEFAULT_STREAM])[0]
    group = query.get("group", [DEFAULT_GROUP])[0]
    if not stream or not group:
        raise BadInput(f"parameter source: {url!r} needs a non-empty stream and group")
    rest = {k: v for k, v in query.items() if k not in ("stream", "group")}
    return parsed._replace(query=urlencode(rest, doseq=True)).geturl(), stream, group


class RedisStreamSource:
    """A Redis stream read through a consumer group, one consumer per process."""

    def __init__(self, url: str, consumer: str | None = None) -> None:
        self.url, self.stream, self.group = parse_redis_source(url)
        self.name = f"redis:{self.stream}:{self.group}"
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            self.conn = RespConnection(self.url)  # control: group, claims, XACK, lag
            self.reader = RespConnection(self.url)  # XREADGROUP only, one request ahead
        except ConnectionError as exc:
            raise ConnectionError(f"parameter source: {exc}") from exc
        self._claim_cursor: bytes | None = b"0-0"
        self._ahead: int | None = None  # entries asked for by the XREADGROUP in flight
        self._ack_unread = 0  # XACKs sent whose replies are still to be read

    def start(self, after: tuple[int, int], offsets: Any = None) -> None:
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
            ack = xack_head(self.stream, self.group, entries.count) + entries.ack_args
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
