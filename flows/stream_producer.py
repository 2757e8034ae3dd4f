"""The producer command: replay a fraud_synth dataset into a Redis stream at a given rate.

Pure logic without prefect. Run as ``python -m flows.stream_sources produce DATASET --redis
URL --stream KEY --rate N`` (events/s; 0 = as fast as possible).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from flows.stream_embedded import EmbeddedSource
from flows.stream_events import FIELDS, KEY_FIELDS, EventBatch
from flows.stream_redis import DEFAULT_STREAM
from flows.stream_resp import RespConnection, _encode_command

log = logging.getLogger(__name__)


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
