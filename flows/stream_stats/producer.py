"""The producer command: replay a fraud_synth dataset into a Redis stream or a Kafka topic.

Pure logic without prefect. Run as ``python -m flows.stream_stats.producer produce DATASET --redis
URL --stream KEY --rate N`` (events/s; 0 = as fast as possible), or with ``--kafka
kafka://host:port/TOPIC`` instead of ``--redis``: one message per event, key = customer id,
value = the event as JSON (the topic is created with ``--partitions`` if missing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from flows.stream_stats.events import FIELDS, KEY_FIELDS, EventBatch
from flows.stream_stats.sources.embedded import EmbeddedSource
from flows.stream_stats.sources.redis_streams import DEFAULT_STREAM
from flows.stream_stats.sources.resp import RespConnection, _encode_command

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


def produce_kafka(
    dataset: str | os.PathLike[str],
    kafka_url: str,
    rate: float = 0.0,
    max_events: int | None = None,
    partitions: int = 3,
    chunk: int = 5_000,
) -> dict[str, Any]:
    """Send a dataset's transactions to a Kafka topic in event-time order at ``rate`` events/s."""
    from confluent_kafka import Producer

    from flows.stream_stats.sources.kafka import client_config, create_topic, parse_kafka_source

    target = parse_kafka_source(kafka_url)
    create_topic(target, partitions)
    producer = Producer(client_config(target) | {"linger.ms": 20}, logger=log)
    source = EmbeddedSource(dataset)
    source.start((-1, -1))
    started = time.perf_counter()
    sent = 0
    while max_events is None or sent < max_events:
        batch = source.read(chunk if max_events is None else min(chunk, max_events - sent))
        if batch is None:
            break
        for key, value in kafka_messages(batch):
            while True:
                try:
                    producer.produce(target.topic, key=key, value=value)
                    break
                except BufferError:  # the local queue is full: let it drain
                    producer.poll(0.1)
        producer.poll(0)
        sent += len(batch)
        if rate > 0:
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
    left = producer.flush(60)
    if left:
        raise ConnectionError(f"parameter kafka: {left} messages not delivered to {target.brokers}")
    seconds = time.perf_counter() - started
    return {
        "events": sent,
        "seconds": round(seconds, 3),
        "events_per_s": round(sent / seconds, 1) if seconds else 0.0,
    }


def kafka_messages(batch: EventBatch) -> list[tuple[bytes, bytes]]:
    """(key = customer id, value = the event as JSON) for every event of a batch."""
    labels = {k: [json.dumps(label) for label in batch.keys[k][1]] for k in KEY_FIELDS}
    customers = [str(x) for x in batch.customer_id.tolist()]
    rows = zip(
        batch.transaction_id.tolist(),
        batch.ts.tolist(),
        customers,
        [labels["merchant_category"][c] for c in batch.keys["merchant_category"][0].tolist()],
        [labels["channel"][c] for c in batch.keys["channel"][0].tolist()],
        [repr(x) for x in batch.amount.tolist()],
        ["true" if x else "false" for x in batch.is_fraud.tolist()],
        strict=True,
    )
    template = (
        '{"transaction_id":%d,"ts":%d,"customer_id":%s,"merchant_category":%s,'
        '"channel":%s,"amount":%s,"is_fraud":%s}'
    )
    return [
        (customer.encode(), (template % row).encode())
        for customer, row in zip(customers, rows, strict=True)
    ]


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
    """Command line: ``produce`` a dataset into a Redis stream or a Kafka topic."""
    parser = argparse.ArgumentParser(prog="python -m flows.stream_stats.producer")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("produce", help="replay a fraud_synth dataset into a stream")
    cmd.add_argument("dataset", help="dataset directory with manifest.json")
    target = cmd.add_mutually_exclusive_group()
    target.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    target.add_argument("--kafka", default=None, help="kafka://host:port/TOPIC")
    cmd.add_argument("--partitions", type=int, default=3, help="of a Kafka topic it creates")
    cmd.add_argument("--stream", default=DEFAULT_STREAM)
    cmd.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as possible)")
    cmd.add_argument("--max-events", type=int, default=None)
    cmd.add_argument("--maxlen", type=int, default=None, help="approximate stream cap")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.kafka:
        result = produce_kafka(
            args.dataset, args.kafka, args.rate, args.max_events, partitions=args.partitions
        )
    else:
        result = produce(
            args.dataset, args.redis, args.stream, args.rate, args.max_events, maxlen=args.maxlen
        )
    log.info("produced %s", json.dumps(result))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
