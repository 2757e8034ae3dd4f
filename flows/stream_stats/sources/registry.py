"""The source a ``source`` parameter names, behind the one interface every source offers
(:class:`flows.stream_stats.events.Source`).

* ``kafka://host:port/TOPIC?group=NAME`` -> :class:`~flows.stream_stats.sources.kafka.KafkaSource`
* ``redis://``, ``rediss://`` (TLS), ``unix://`` ->
  :class:`~flows.stream_stats.sources.redis_streams.RedisStreamSource`
* anything else: a fraud_synth dataset directory replayed as a stream
  (:class:`~flows.stream_stats.sources.embedded.EmbeddedSource`).

Each source module is imported only when its scheme is asked for, so a child that replays a
dataset never loads a Kafka or Redis client.
"""

from __future__ import annotations

from flows.stream_stats.events import Source


def open_source(spec: str) -> Source:
    """The source a ``source`` parameter names: redis://, kafka://... or a dataset directory."""
    if spec.startswith("kafka://"):
        from flows.stream_stats.sources.kafka import KafkaSource

        return KafkaSource(spec)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from flows.stream_stats.sources.redis_streams import RedisStreamSource

        return RedisStreamSource(spec)
    from flows.stream_stats.sources.embedded import EmbeddedSource

    return EmbeddedSource(spec.removeprefix("embedded:"))
