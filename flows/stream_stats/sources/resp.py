"""A minimal RESP2 (Redis protocol) connection over a socket, with a fast path for entries.

Pure logic without prefect. URLs: redis://host:port/db (TCP), rediss:// (TLS: certificate and
host name checked with the system's trust store, or ``?ssl_ca_certs=PATH``, before anything
is sent, so a password never goes out in plaintext), unix:///path.sock?db=N (unix socket).

Why not redis-py: the same XREADGROUP batches of 32,768 entries read into event columns, no
sink, in the same run of bench/bench_stream_stats.py (500,000 entries of the real Redis on
this machine, 2 shared cores; two runs on 2026-12-03): this reader 102 k and 201 k entries/s,
redis-py 8.1 with hiredis 3.5 (its C parser; raw replies, no dict per entry) 67 k and 86 k;
through redis-py's own XREADGROUP reply parsing (a dict per entry) about 21 k. redis-py reads
below the 100 k events/s the Redis path must reach end to end before any aggregation (with
this reader the path reached 126 k and 114 k in those runs), so stream replies are read by
:meth:`RespConnection.read_entries`, which hands canonical entries to the numpy parser
(flows.stream_stats.sources.resp_bulk), then tries a compiled regex, then parses entry by entry.
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import ParseResult, parse_qs, unquote, urlparse

from flows.stream_stats.events import FIELDS
from flows.stream_stats.sources.resp_bulk import _LINES_PER_ENTRY, ParsedEntries, parse_canonical
from headroom.errors import BadInput


class RespError(Exception):
    """An error reply from Redis."""


def _encode_command(*args: Any) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def xack_head(stream: str, group: str, ids: int) -> bytes:
    """The start of an XACK of ``ids`` entries, up to the first id's own length prefix."""
    head = _encode_command("XACK", stream, group)
    return b"*%d\r\n" % (3 + ids) + head.split(b"\r\n", 1)[1]


def _entry_pattern(fields: tuple[str, ...]) -> re.Pattern[bytes]:
    body = b"".join(
        rb"\$\d+\r\n" + re.escape(name.encode()) + rb"\r\n\$\d+\r\n([^\r\n]*)\r\n"
        for name in fields
    )
    return re.compile(rb"\*2\r\n\$\d+\r\n(\d+-\d+)\r\n\*%d\r\n" % (2 * len(fields)) + body)


_ENTRY = _entry_pattern(FIELDS)


_PATIENCE_S = 1.0  # a canonical reply's silences are waited out to 3 s in all (0.1 s doubling)


def connect(parsed: ParseResult, timeout_s: float) -> socket.socket:
    """A socket to the Redis a URL names: redis:// TCP, rediss:// TLS (certificate and host
    checked; ``?ssl_ca_certs=PATH`` for a private CA), unix:///path a unix socket."""
    options = parse_qs(parsed.query)
    unknown = sorted(set(options) - {"ssl_ca_certs", "db"})
    if unknown:
        raise BadInput(f"parameter source: unknown Redis URL options {unknown}")
    if parsed.scheme == "unix":
        where = parsed.path
        if not where:
            raise BadInput("parameter source: unix:// needs a socket path, unix:///path.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(where)
        except OSError as exc:
            sock.close()
            raise ConnectionError(f"parameter source: Redis socket {where}: {exc}") from None
        return sock
    if parsed.scheme not in ("redis", "rediss"):
        raise BadInput(f"parameter source: {parsed.scheme}:// is not a Redis URL scheme")
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise ConnectionError(
            f"parameter source: Redis at {host}:{port} is not reachable ({exc})"
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if parsed.scheme == "redis":
        return sock
    # TLS before anything else is sent: a password never travels in plaintext.
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs", [None])[0])
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise ConnectionError(
            f"parameter source: TLS with Redis at {host}:{port} failed ({exc})"
        ) from None


class RespConnection:
    """One Redis connection speaking RESP2 over a socket."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        parsed = urlparse(url)
        self.timeout_s = timeout_s
        self.sock = connect(parsed, timeout_s)
        self.buf = bytearray()
        self.pos = 0
        if parsed.password:
            auth = (
                [unquote(parsed.username), unquote(parsed.password)]
                if parsed.username
                else [unquote(parsed.password)]
            )
            self.command("AUTH", *auth)
        query = parse_qs(parsed.query)
        db = query["db"][0] if parsed.scheme == "unix" and "db" in query else None
        if db is None:
            db = "0" if parsed.scheme == "unix" else (parsed.path or "/0").strip("/") or "0"
        if db != "0":
            self.command("SELECT", db)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        """Read more, first dropping what has been consumed once it is most of the buffer."""
        if self.pos > (1 << 20) and self.pos > len(self.buf) // 2:
            del self.buf[: self.pos]
            self.pos = 0
        self._fill_keeping()

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

        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True  # decrypted bytes already inside the TLS layer: the socket is quiet
        return bool(select.select([self.sock], [], [], timeout_s)[0])

    def _generic_entries(self, count: int) -> Entries:
        entries = Entries([], {name: [] for name in FIELDS}, [])
        for _ in range(count):
            entries.add(self.read_reply())
        return entries


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
        interleaved: list[bytes] = [b""] * (2 * len(ids))
        interleaved[0::2] = lengths
        interleaved[1::2] = ids
        return xack_head(stream, group, len(ids)) + b"\r\n".join(interleaved) + b"\r\n"
