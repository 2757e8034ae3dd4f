"""The Kafka source: every partition of a topic read by one consumer, exactly once into the sink.

Pure logic without prefect. ``kafka://host:port[,host2:port]/TOPIC?group=NAME``; security
settings come from the environment of the worker (no Secret block is read), never from the
URL. A message's key is the customer id, its value a JSON object with the seven event
fields (flows.stream_stats.events.FIELDS, ``ts`` in epoch ms).

Exactly once: the sink, not Kafka, owns the positions (as in Spark's and Flink's Kafka
sources). The consumer assigns itself every partition of the topic (``assign``, no group
membership: a sink holds every partition's windows, and its lock admits one consumer), each
at the next offset the sink committed, or the log start for a partition the sink has never
seen; partitions added to the topic while a run goes on are read by the next run. Every
micro-batch carries the next offset of each partition it read, and the sink commits those
offsets in the same DuckDB transaction as the window state they produced, so a kill or a
restart re-reads exactly what was not committed. The group's offsets in Kafka are
committed after the sink's, only for lag monitoring; other members of the group (another
reader, a rebalance among them) never move this consumer.

Speed (figures in BENCHMARKS.md): joining a group cost 5 s on Tansu (its JoinGroup waits half
the session timeout), so there is no join. read() hands each consume() chunk to one of two
parse threads (PARSE_THREADS), which maps the unbound ``Message`` methods over it (one C call
per message, no Python frame), parses all its values at once with Arrow's JSON reader (one
message at a time only when some value is not a canonical event, to name each reject's
partition and offset) and lets the messages go; the next chunks are consumed meanwhile.
read() waits for every parse before it returns, so nothing runs beside the commit, the seek
or close(). librdkafka's fetch backoff is shortened (CONSUMER_TUNING): with its default a
full local queue stalls fetching for a second.

Event time is one watermark over all partitions (as in Spark): partitions consumed far apart
in time make the slower one's events late, so the watermark must cover that spread.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from flows.stream_stats.events import FIELDS, KEY_FIELDS, EventBatch, batch_from_columns
from headroom.errors import BadInput

log = logging.getLogger(__name__)

DEFAULT_GROUP = "stream-stats"
# Environment variables of the worker for a secured cluster (never the URL).
SECURITY_ENV = {
    "KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "KAFKA_SASL_USERNAME": "sasl.username",
    "KAFKA_SASL_PASSWORD": "sasl.password",
    "KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
}
CONNECT_TIMEOUT_S = 15.0
FETCH_CHUNK = 10_000  # messages per consume() call
# librdkafka stops fetching when its queue holds queued.min.messages, and by default waits
# a whole second before it looks again: a reader that drains the queue in a fraction of
# that (a micro-batch holds more than the queue) would wait for the broker each time.
CONSUMER_TUNING = {"fetch.queue.backoff.ms": 20}
# Parsing a chunk costs about twice its consume() (1.3-1.8 against 0.7-1.0 CPU-us a message
# on 2 AMD EPYC cores): one parse thread fell behind the consumer and parsed on for 0.27 s
# after the last poll of a 262,144-event batch. Two, alternated on 2 cores, 300,000 events:
# 0.29-0.30 -> 0.36-0.37 M events/s where two thirds are late, 0.18-0.22 -> 0.19-0.26 M on
# the benchmark's stream (within its spread).
PARSE_THREADS = 2


@dataclass(frozen=True)
class KafkaTarget:
    """Where a kafka:// source points: bootstrap brokers, topic, consumer group."""

    brokers: str
    topic: str
    group: str

    @property
    def first_broker(self) -> str:
        return self.brokers.split(",")[0]


def parse_kafka_source(url: str) -> KafkaTarget:
    """The target of ``kafka://host:port[,host:port]/TOPIC?group=NAME`` (BadInput if not one)."""
    parsed = urlparse(url)
    if parsed.scheme != "kafka":
        raise BadInput(f"parameter source: {url!r} is not a kafka:// URL")
    if "@" in parsed.netloc:
        raise BadInput(
            "parameter source: credentials do not belong in a kafka:// URL; set "
            "KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD in the environment instead"
        )
    brokers = [b for b in parsed.netloc.split(",") if b]
    for broker in brokers:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit():
            raise BadInput(f"parameter source: broker {broker!r} in {url!r} is not host:port")
    topic = parsed.path.strip("/")
    query = parse_qs(parsed.query)
    unknown = sorted(set(query) - {"group"})
    if not brokers or not topic or "/" in topic or unknown:
        raise BadInput(
            f"parameter source: {url!r} is not kafka://host:port[,host:port]/TOPIC?group=NAME"
            + (f" (unknown options {unknown})" if unknown else "")
        )
    group = query.get("group", [DEFAULT_GROUP])[0]
    if not group:
        raise BadInput(f"parameter source: {url!r} needs a non-empty group")
    return KafkaTarget(",".join(brokers), topic, group)


def client_config(target: KafkaTarget, environ: Mapping[str, str] | None = None) -> dict:
    """librdkafka settings common to consumer, producer and admin: brokers and security."""
    environ = os.environ if environ is None else environ
    config: dict[str, Any] = {"bootstrap.servers": target.brokers}
    for name, key in SECURITY_ENV.items():
        if environ.get(name):
            config[key] = environ[name]
    return config


def check_brokers(client: Any, target: KafkaTarget, topic: str | None = None) -> Any:
    """Cluster metadata; ConnectionError naming the brokers and the parameter if none answers."""
    from confluent_kafka import KafkaException

    refused = []
    for broker in target.brokers.split(","):
        host, _, port = broker.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
            break
        except OSError as exc:
            refused.append(f"{broker}: {exc.strerror or exc}")
    else:
        raise ConnectionError(
            f"parameter source: no Kafka broker accepts connections ({'; '.join(refused)})"
        )
    try:
        return client.list_topics(topic, timeout=CONNECT_TIMEOUT_S)
    except KafkaException as exc:
        raise ConnectionError(
            f"parameter source: Kafka brokers {target.brokers} did not answer within "
            f"{CONNECT_TIMEOUT_S:.0f} s ({exc.args[0].str()})"
        ) from None


def check_reachable(client: Any, target: KafkaTarget) -> Any:
    """The topic's metadata; ConnectionError if no broker answers, BadInput if no topic."""
    metadata = check_brokers(client, target, target.topic)
    topic = metadata.topics.get(target.topic)
    if topic is None or topic.error is not None:
        raise BadInput(
            f"parameter source: topic {target.topic!r} does not exist on {target.brokers}"
            + (f" ({topic.error})" if topic is not None else "")
        )
    return topic


def create_topic(target: KafkaTarget, partitions: int) -> None:
    """Create the target's topic with ``partitions`` partitions unless it exists."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(target), logger=log)
    check_brokers(admin, target)
    for future in admin.create_topics([NewTopic(target.topic, partitions, 1)]).values():
        try:
            future.result(timeout=CONNECT_TIMEOUT_S)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


class KafkaSource:
    """A Kafka topic, all partitions assigned to this reader; positions owned by the sink."""

    def __init__(self, url: str) -> None:
        self.target = parse_kafka_source(url)
        self.name = f"kafka:{self.target.topic}:{self.target.group}"
        self.consumer: Any = None
        self.offsets: Mapping[int, int] = {}  # the sink's next offset per partition, live
        self.assigned: set[int] = set()
        # Threads parse the chunks read() consumes; only read() uses them, and waits for them.
        self.parser = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="kafka-parse")

    def start(self, after: tuple[int, int], offsets: Mapping[int, int] | None = None) -> None:
        """Assign every partition at the sink's offsets (``offsets``: its live mapping)."""
        # The parse thread's modules, imported before the first poll: the first chunk's
        # parse would otherwise import them, holding the interpreter the consumer needs.
        import pyarrow.compute  # noqa: F401
        import pyarrow.json  # noqa: F401
        from confluent_kafka import Consumer

        self.offsets = {} if offsets is None else offsets
        config = client_config(self.target) | {
            "group.id": self.target.group,  # only for the informational commits (lag)
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            **CONSUMER_TUNING,
        }
        self.consumer = Consumer(config, logger=log)
        self._assign_new(check_reachable(self.consumer, self.target))

    def _assign_new(self, topic: Any) -> None:
        """Assign the topic's partitions not held yet, each at the sink's offset."""
        # Called once, at start: a run is bounded (max_seconds), and the next one assigns
        # partitions added meanwhile (Tansu, the test broker, cannot add partitions).
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        new = sorted(set(topic.partitions) - self.assigned)
        if new:
            where = [
                TopicPartition(self.target.topic, p, self.offsets.get(p, OFFSET_BEGINNING))
                for p in new
            ]
            self.consumer.incremental_assign(where)
            self.assigned.update(new)
            log.info(
                "topic %s: assigned partitions %s at the sink's offsets %s",
                self.target.topic,
                new,
                {tp.partition: tp.offset for tp in where},
            )

    def read(self, max_events: int, block_ms: int = 1000) -> EventBatch | None:
        """Up to ``max_events`` messages: waits ``block_ms`` for the first, then takes the rest."""
        deadline = time.monotonic() + block_ms / 1000
        chunks: list[Future] = []
        count = 0
        while count < max_events:
            left = deadline - time.monotonic()
            got = self.consumer.consume(
                min(FETCH_CHUNK, max_events - count), 0 if count else max(0.0, left)
            )
            if got:
                # Parsed while the next chunk is consumed (Arrow's reader releases the GIL),
                # and the messages freed then, as a bare consumer frees them.
                chunks.append(self.parser.submit(parse_chunk, got))
                count += len(got)
            elif count or left <= 0:
                break
        if not chunks:
            return None
        # Every parse finishes here: nothing runs on after read() returns.
        return chunks_to_batch([future.result() for future in chunks], self.offsets)

    def ack(self, batch: EventBatch) -> None:
        """Kafka learns the committed positions, for lag monitoring only."""
        if batch.offsets:
            self._commit_informational(set(batch.offsets), asynchronous=True)

    def _commit_informational(self, partitions: set[int], asynchronous: bool) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [
            TopicPartition(self.target.topic, p, self.offsets[p])
            for p in sorted(partitions)
            if p in self.offsets
        ]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as exc:  # positions live in the sink: this is only monitoring
            log.warning("topic %s: informational offset commit failed: %s", self.target.topic, exc)

    def lag(self) -> dict[str, Any]:
        """Messages in the topic past the sink's offsets, per partition (last fetch's view)."""
        from confluent_kafka import TopicPartition

        per_partition = {}
        for p in sorted(self.assigned):
            # The high watermark the last fetch brought: no request (Tansu answers a
            # ListOffsets request slowly and below its last record).
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.target.topic, p), cached=True
            )
            if high < 0:
                continue  # nothing fetched from this partition yet
            per_partition[p] = max(0, high - max(low, self.offsets.get(p, low)))
        return {"lag": sum(per_partition.values()), "partitions": per_partition}

    def close(self) -> None:
        if self.consumer is not None:
            if self.assigned:
                self._commit_informational(self.assigned, asynchronous=False)
            self.consumer.close()
            self.consumer = None
        self.parser.shutdown(wait=True, cancel_futures=True)


_NUMBERS = {"transaction_id": int, "ts": int, "customer_id": int, "amount": float}


@cache
def _schema() -> Any:
    """The Arrow schema of a canonical event value."""
    import pyarrow as pa

    return pa.schema(
        [
            ("transaction_id", pa.int64()),
            ("ts", pa.int64()),
            ("customer_id", pa.int64()),
            ("merchant_category", pa.string()),
            ("channel", pa.string()),
            ("amount", pa.float64()),
            ("is_fraud", pa.bool_()),
        ]
    )


@dataclass
class Chunk:
    """One consume() chunk: each message's partition and offset, and its values parsed."""

    partitions: np.ndarray
    positions: np.ndarray
    table: Any  # the Arrow table of all values, or None if one is not a canonical event
    values: list[bytes | None]  # kept only where ``table`` is None


def parse_chunk(messages: list[Any]) -> Chunk:
    """The :class:`Chunk` of messages (errors Kafka delivered instead of messages dropped)."""
    from confluent_kafka import Message

    # Unbound methods mapped over the list: one C call per message, no Python frame.
    if any(map(Message.error, messages)):
        kept = [m for m in messages if m.error() is None]
        log.warning("Kafka delivered %d errors instead of messages", len(messages) - len(kept))
        messages = kept
    values = list(map(Message.value, messages))
    table = _parse_values(values)
    return Chunk(
        np.fromiter(map(Message.partition, messages), np.int64, len(messages)),
        np.fromiter(map(Message.offset, messages), np.int64, len(messages)),
        table,
        [] if table is not None else values,
    )


def chunks_to_batch(chunks: list[Chunk], offsets: Mapping[int, int]) -> EventBatch | None:
    """One batch of chunks in order; messages below the sink's offsets dropped, bad ones
    rejected with their partition and offset."""
    partitions = np.concatenate([c.partitions for c in chunks])
    positions = np.concatenate([c.positions for c in chunks])
    fresh = np.ones(len(partitions), dtype=bool)
    if offsets and len(partitions):
        floor = np.zeros(int(partitions.max()) + 1, dtype=np.int64)
        for partition, offset in offsets.items():
            if partition < len(floor):
                floor[partition] = offset
        fresh = positions >= floor[partitions]  # committed already: read before a restart
    partitions, positions = partitions[fresh], positions[fresh]
    if not len(partitions):
        return None
    next_offsets = {
        int(p): int(positions[partitions == p].max()) + 1 for p in np.unique(partitions).tolist()
    }
    if all(c.table is not None for c in chunks):
        import pyarrow as pa

        from flows.common.arrow import column

        table = pa.concat_tables([c.table for c in chunks])
        if not fresh.all():
            table = table.filter(column(fresh))
        columns = {name: table[name] for name in FIELDS}
        return batch_from_columns(partitions, positions, columns, offsets=next_offsets)
    # Some value is not a canonical event: one by one, with reasons.
    parsed: list[tuple[dict[str, Any] | None, str]] = []
    for chunk in chunks:
        if chunk.table is not None:
            parsed.extend((row, "") for row in chunk.table.to_pylist())
        else:
            parsed.extend(map(parse_event, chunk.values))
    rows, good, rejects = [], [], []
    kept = (item for item, keep in zip(parsed, fresh.tolist(), strict=True) if keep)
    for i, (event, reason) in enumerate(kept):
        if event is None:
            where = f"partition {partitions[i]} offset {positions[i]}"
            rejects.append((where, reason))
            log.warning("%s rejected: %s", where, reason)
        else:
            rows.append(event)
            good.append(i)
    columns = {name: [row[name] for row in rows] for name in FIELDS}
    columns["ts"] = np.array(columns["ts"], dtype=np.int64)
    for name in KEY_FIELDS:
        columns[name] = [str(v) for v in columns[name]]
    return batch_from_columns(
        partitions[good], positions[good], columns, rejects=rejects, offsets=next_offsets
    )


def _parse_values(values: list[bytes | None]) -> Any:
    """An Arrow table of the values (Arrow's JSON reader), or None if any is not canonical."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    try:
        joined = b"\n".join(values)  # type: ignore[arg-type]
    except TypeError:  # a message without a value
        return None
    if joined.count(b"\n") != len(values) - 1:  # a value spans lines: not one JSON per line
        return None
    try:
        table = pj.read_json(
            pa.BufferReader(joined),
            # One chunk is small, and read() already parses beside the consumer.
            read_options=pj.ReadOptions(use_threads=False),
            parse_options=pj.ParseOptions(
                explicit_schema=_schema(), unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if table.num_rows != len(values) or any(c.null_count for c in table.columns):
        return None
    if not pc.all(pc.is_finite(table["amount"])).as_py():
        return None
    return table


def parse_event(value: bytes | None) -> tuple[dict[str, Any] | None, str]:
    """(the event, '') or (None, why it is not one) for one message value."""
    try:
        event = json.loads(value) if value is not None else None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"value is not JSON ({exc})"[:200]
    if not isinstance(event, dict):
        return None, "value is not a JSON object"
    missing = [name for name in FIELDS if name not in event]
    if missing:
        return None, f"value lacks {missing}"
    for name, kind in _NUMBERS.items():
        number = event[name]
        if isinstance(number, bool) or not isinstance(number, int | float):
            return None, f"field {name}: {str(number)[:40]!r} is not a number"
        if not math.isfinite(number):
            return None, f"field {name}: {number!r} is not finite"
        if kind is int and number != int(number):
            return None, f"field {name}: {number!r} is not a whole number"
    if not isinstance(event["is_fraud"], bool | int):
        return None, f"field is_fraud: {str(event['is_fraud'])[:40]!r} is not a boolean"
    for name in KEY_FIELDS:
        if not isinstance(event[name], str):
            return None, f"field {name}: {str(event[name])[:40]!r} is not a string"
    return event, ""
