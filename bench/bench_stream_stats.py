"""Benchmark stream_stats: per-event Python aggregation vs the vectorised micro-batch consumer.

Subjects run as separate processes (bench.common.measure: peak RSS and CPU of the tree):
the baseline (a dict per window and key updated in a loop), ours on the embedded source, ours
end to end from Redis (the stream filled by the producer first), and with a GPU the GPU
backend. Targets (issue 7): >= 1,000,000 events/s embedded on CPU, >= 100,000 events/s from
Redis. Kafka (issue 20): a throwaway Tansu broker on 127.0.0.1, the topic filled by the
producer, then a bare confluent-kafka consumer draining it (the broker's ceiling) and ours end
to end; target >= 0.8 of the ceiling.

    .venv/bin/python -m bench.bench_stream_stats [--scale 2.0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import uuid
from pathlib import Path

from bench.common import measure, python, table, write_section
from flows.stream_stats.sources.redis_streams import READ_CHUNK

SCRATCH = Path("/tmp/stream-stats-bench")
TRANSACTIONS = 2_000_000
BASELINE_EVENTS = 300_000
REDIS_EVENTS = 500_000
REDIS_URL = "redis://127.0.0.1:6379/0"
KAFKA_EVENTS = 300_000
SPARK_LINE = (
    "- reference: the Spark Structured Streaming job this replaces, 0.8-1.5 k events/s on CPU, "
    "2.5-3.5 k on GPU"
)
# A bare consumer draining every partition from the start: what the broker serves at most.
CEILING = """
import json, sys, time
from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
brokers, topic, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": brokers, "group.id": "ceiling", "enable.auto.commit": False})
parts = c.list_topics(topic, timeout=15).topics[topic].partitions
c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
got, t = 0, time.perf_counter()
while got < want:
    got += sum(1 for m in c.consume(10000, 5.0) if m.error() is None)
s = time.perf_counter() - t
c.close()
print(json.dumps({"events": got, "seconds": s, "events_per_s": got / s, "batch_s_max": s}))
"""


# The same XREADGROUP batches of one stream read to EventBatch columns (no sink) by the
# hand RESP reader (flows.stream_stats.sources.redis_streams) and by redis-py with hiredis, each
# in a new group.
READERS = """
import json, sys, time, uuid
import numpy as np
url, key, want, reader = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
group = "readers-" + uuid.uuid4().hex[:6]
got, t = 0, time.perf_counter()
if reader == "hand":
    from flows.stream_stats.sources.redis_streams import READ_CHUNK, RedisStreamSource
    source = RedisStreamSource(f"{url}?stream={key}&group={group}")
    source.start((-1, -1))
    while got < want:
        batch = source.read(262144, 1000)
        got += len(batch.ts)
    source.close()
else:
    import redis
    from redis.utils import HIREDIS_AVAILABLE
    from flows.stream_stats.events import FIELDS, batch_from_columns
    from flows.stream_stats.sources.redis_streams import READ_CHUNK
    if not HIREDIS_AVAILABLE:  # not a dependency: pip install hiredis to measure it
        print(json.dumps({"events": 0, "seconds": 0, "events_per_s": 0, "missing": "hiredis"}))
        sys.exit(0)
    NAMES = [f.encode() for f in FIELDS]
    client = redis.Redis.from_url(url)
    client.xgroup_create(key, group, id="0")
    # The raw reply (no per-entry dict): [[stream, [[id, [field, value, ...]], ...]]], or
    # {stream: [...]} where the server speaks RESP3.
    client.set_response_callback("XREADGROUP", lambda reply, **options: reply)
    while got < want:
        reply = client.execute_command(
            "XREADGROUP", "GROUP", group, "c", "COUNT", READ_CHUNK, "STREAMS", key, ">"
        )
        [entries] = reply.values() if isinstance(reply, dict) else [e for _, e in reply]
        flat = [pairs for _, pairs in entries]
        assert all(pairs[0::2] == NAMES for pairs in flat)  # the canonical field order
        values = [[pairs[2 * k + 1] for pairs in flat] for k in range(len(FIELDS))]
        columns = {f: np.array(values[k], dtype=np.int64) for k, f in enumerate(FIELDS[:3])}
        columns["merchant_category"] = [v.decode() for v in values[3]]
        columns["channel"] = [v.decode() for v in values[4]]
        columns["amount"] = np.array(values[5], dtype=np.float64)
        columns["is_fraud"] = np.array(values[6], dtype=np.int64) != 0
        ids = b"-".join(i for i, _ in entries).split(b"-")
        hi = np.array(ids[0::2], dtype=np.int64)
        lo = np.array(ids[1::2], dtype=np.int64)
        got += len(batch_from_columns(hi, lo, columns).ts)
    client.xgroup_destroy(key, group)
s = time.perf_counter() - t
print(json.dumps({"events": got, "seconds": s, "events_per_s": got / s}))
"""


def _json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--no-kafka", action="store_true")
    args = parser.parse_args()
    from flows.stream_stats.compute.gpu import available
    from flows.stream_stats.sources.embedded import fraud_dataset

    shutil.rmtree(SCRATCH, ignore_errors=True)
    n = int(TRANSACTIONS * args.scale)
    dataset = fraud_dataset(SCRATCH / "fraud", transactions=n, seed=1, files=8, days=7)
    rows = []

    baseline_n = int(BASELINE_EVENTS * args.scale)
    code = (
        "import json, time\n"
        "from flows.stream_stats.sources.embedded import read_events\n"
        "from flows.stream_stats.windows import WindowSpec\n"
        "from flows.stream_stats.compute.baseline import baseline_aggregate\n"
        f"events = read_events({str(dataset)!r})[:{baseline_n}]\n"
        "t = time.perf_counter()\n"
        "out = baseline_aggregate(events, WindowSpec(60000, 60000, 300000))\n"
        "s = time.perf_counter() - t\n"
        "print(json.dumps({'events': len(events), 'seconds': s, 'events_per_s': len(events)/s,"
        " 'batch_s_max': s}))\n"
    )
    base = measure("baseline: per-event dict", python(code))
    base_figures = _json(base.output)
    rows.append(
        [
            "baseline: per-event Python dict (aggregation only)",
            base_figures["events"],
            base_figures["events_per_s"],
            base_figures["batch_s_max"],
            base.peak_rss_mb,
            1.0,
        ]
    )

    def consume(
        label: str, source: str, backend: str = "cpu", max_events: int | None = None
    ) -> dict:
        sink = SCRATCH / f"{uuid.uuid4().hex[:6]}.duckdb"
        run = measure(
            label,
            [
                sys.executable,
                "-m",
                "flows.stream_stats.consume",
                "consume",
                source,
                str(sink),
                "--window",
                "1min",
                "--watermark",
                "5min",
                "--max-batch",
                "262144",
                "--idle",
                "0.5",
                "--backend",
                backend,
                "--max-seconds",
                "600",
                # A stream's run stops at the count produced, as the bare consumer does,
                # instead of waiting --idle for more (that wait is not reading).
                *(["--max-events", str(max_events)] if max_events else []),
            ],
        )
        figures = _json(run.output)
        rows.append(
            [
                label,
                figures["events"],
                figures["events_per_s"],
                figures["batch_s_max"],
                run.peak_rss_mb,
                figures["events_per_s"] / base_figures["events_per_s"],
            ]
        )
        return figures

    embedded = consume("ours: embedded source, CPU", str(dataset))
    gpu_ok, why = available()
    if gpu_ok:
        consume("ours: embedded source, GPU", str(dataset), backend="gpu")
    redis = None
    if not args.no_redis:
        import redis as redis_client

        key = f"bench:stream-stats:{uuid.uuid4().hex[:8]}"
        count = int(REDIS_EVENTS * args.scale)
        produced = measure(
            "producer",
            [
                sys.executable,
                "-m",
                "flows.stream_stats.producer",
                "produce",
                str(dataset),
                "--redis",
                REDIS_URL,
                "--stream",
                key,
                "--max-events",
                str(count),
            ],
        )
        producer = _json(produced.output)
        try:
            redis = consume(
                "ours: Redis stream end to end, CPU",
                f"{REDIS_URL}?stream={key}&group=bench",
                max_events=count,
            )
            readers = {
                name: _json(
                    measure(
                        f"reader {name}", [*python(READERS), REDIS_URL, key, str(count), name]
                    ).output
                )
                for name in ("hand", "redis-py")
            }
        finally:
            redis_client.Redis.from_url(REDIS_URL).delete(key)
    kafka = _kafka(args, dataset, consume) if not args.no_kafka else None
    markdown = [
        "## stream_stats",
        "",
        f"{n:,} fraud_synth transactions over 7 days, 1-minute windows by merchant category "
        "and channel, 5-minute watermark, micro-batches of 262,144 events. events/s covers "
        "reading, aggregation and the DuckDB commit of every micro-batch; the baseline's "
        "covers its aggregation loop only. A stream's run (a process of its own) is timed from "
        "opening the source and the sink to the sink's close, and stops at the count produced "
        "(as the bare Kafka consumer does) instead of waiting for more. GPU: "
        + ("measured" if gpu_ok else f"none ({why})"),
        "",
        table(
            ["subject", "events", "events/s", "longest batch s", "peak RSS MiB", "x baseline"], rows
        ),
        "",
        f"- target >= 1,000,000 events/s embedded on CPU: "
        f"{'met' if embedded['events_per_s'] >= 1e6 else 'not met'} "
        f"({embedded['events_per_s']:,.0f})",
    ]
    if redis is not None:
        markdown.append(
            f"- target >= 100,000 events/s end to end from Redis: "
            f"{'met' if redis['events_per_s'] >= 1e5 else 'not met'} "
            f"({redis['events_per_s']:,.0f}; producer {producer['events_per_s']:,.0f} events/s)"
        )
        library = readers["redis-py"]
        markdown.append(
            f"- reading the same XREADGROUP batches of {READ_CHUNK:,} into event columns, no "
            f"sink: the hand RESP reader {readers['hand']['events_per_s']:,.0f} entries/s, "
            + (
                "redis-py with hiredis not measured (pip install hiredis)"
                if library.get("missing")
                else f"redis-py with hiredis {library['events_per_s']:,.0f} entries/s"
            )
        )
    if kafka is not None:
        ours, ceiling, sent = kafka
        ratio = ours["events_per_s"] / ceiling["events_per_s"]
        markdown.append(
            f"- Kafka (Tansu 0.6.0, 3 partitions) end to end {ours['events_per_s']:,.0f} "
            f"events/s against the broker's ceiling {ceiling['events_per_s']:,.0f} (a bare "
            f"consumer draining the topic): {ratio:.2f} of it, target >= 0.8 "
            f"{'met' if ratio >= 0.8 else 'not met'}; producer {sent['events_per_s']:,.0f} events/s"
        )
    markdown.append(SPARK_LINE)
    write_section("stream_stats", "\n".join(markdown))
    print("\n".join(markdown))
    shutil.rmtree(SCRATCH, ignore_errors=True)


def _kafka(args: argparse.Namespace, dataset: Path, consume) -> tuple[dict, dict, dict]:
    """(ours end to end, the bare consumer's ceiling, the producer) on a throwaway broker."""
    from flows.stream_stats.sources.kafka_broker import local_broker

    count = int(KAFKA_EVENTS * args.scale)
    with local_broker() as brokers:
        url = f"kafka://{brokers}/bench?group=bench"
        produced = measure(
            "producer (Kafka)",
            [
                *[sys.executable, "-m", "flows.stream_stats.producer", "produce", str(dataset)],
                *["--kafka", url, "--max-events", str(count)],
            ],
        )
        ceiling = measure(
            "bare confluent-kafka consumer", [*python(CEILING), brokers, "bench", str(count)]
        )
        ceiling_figures = _json(ceiling.output)
        ours = consume("ours: Kafka topic end to end, CPU", url, max_events=count)
    return ours, ceiling_figures, _json(produced.output)


if __name__ == "__main__":
    main()
