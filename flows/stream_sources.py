"""Transaction event sources behind one small interface, and a producer for Redis Streams.

Pure logic without prefect. The entry point the flow, tests and benchmarks import; the parts
live in modules named for what they are:

* flows.stream_events: :class:`EventBatch` (one micro-batch, columnar) and :class:`Source`.
* flows.stream_embedded: :class:`EmbeddedSource` replays a fraud_synth dataset (see
  fraud-schema: files listed in ``manifest.json``, each in time order) as a stream; the stream
  ID of an event is (file index, row in file). Also the dataset helpers of tests and benchmarks.
* flows.stream_redis: :class:`RedisStreamSource` reads a Redis stream through a consumer group:
  XAUTOCLAIM first takes over what a dead consumer left pending, then XREADGROUP reads new
  entries in batches; entries are acknowledged (XACK) only after the sink committed them.
  Stream IDs are Redis' own (milliseconds, sequence).
* flows.stream_resp, flows.stream_resp_bulk: Redis replies are parsed by a small RESP reader
  with a numpy fast path for entries written in the canonical field order (redis-py, even
  with hiredis, reads too slowly here: figures in flows.stream_resp); rediss:// is TLS with the
  certificate checked, unix:// a unix socket.
* flows.stream_kafka: :class:`KafkaSource` assigns itself every partition of a Kafka topic at
  the sink's offsets, exactly once: partition offsets are committed in the sink with the
  windows they produced (the group's offsets in Kafka only show lag).
* flows.stream_producer: ``python -m flows.stream_sources produce DATASET --redis URL --stream
  KEY --rate N`` (or ``--kafka kafka://host:port/TOPIC``) replays a dataset into a stream or
  topic at a given rate (events/s; 0 = as fast as possible).
"""

from __future__ import annotations

from flows.stream_embedded import (
    CHANNELS,
    MERCHANT_CATEGORIES,
    EmbeddedSource,
    fraud_dataset,
    load_manifest,
    read_events,
    synthetic_events,
    write_events_dataset,
)
from flows.stream_events import (
    FIELDS,
    KEY_FIELDS,
    EventBatch,
    Source,
    batch_from_columns,
    concat_batches,
)
from flows.stream_kafka import KafkaSource, parse_kafka_source
from flows.stream_producer import main, produce, xadd_batch
from flows.stream_redis import (
    DEFAULT_GROUP,
    DEFAULT_STREAM,
    READ_CHUNK,
    RedisStreamSource,
    parse_redis_source,
)
from flows.stream_resp import Entries, RespConnection, RespError
from flows.stream_resp_bulk import ParsedEntries, parse_canonical

__all__ = [
    "CHANNELS",
    "DEFAULT_GROUP",
    "DEFAULT_STREAM",
    "FIELDS",
    "KEY_FIELDS",
    "MERCHANT_CATEGORIES",
    "READ_CHUNK",
    "EmbeddedSource",
    "Entries",
    "EventBatch",
    "KafkaSource",
    "ParsedEntries",
    "RedisStreamSource",
    "RespConnection",
    "RespError",
    "Source",
    "batch_from_columns",
    "concat_batches",
    "fraud_dataset",
    "load_manifest",
    "main",
    "open_source",
    "parse_canonical",
    "parse_kafka_source",
    "parse_redis_source",
    "produce",
    "read_events",
    "synthetic_events",
    "write_events_dataset",
    "xadd_batch",
]


def open_source(spec: str) -> Source:
    """The source a ``source`` parameter names: redis://, kafka://... or a dataset directory."""
    if spec.startswith("kafka://"):
        return KafkaSource(spec)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStreamSource(spec)
    return EmbeddedSource(spec.removeprefix("embedded:"))


if __name__ == "__main__":
    raise SystemExit(main())
