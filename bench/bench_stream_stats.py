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
# argv: brokers, topic, count, "ours" (the librdkafka settings of flows.stream_stats.sources.kafka's
# consumer) or "defaults" (librdkafka's). Timed as ours is: from the first poll to the last
# message in hand ("seconds"), and from creating the consumer to its close ("run_s").
CEILING = """
import json, sys, time
from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
from flows.stream_stats.sources.kafka import CONSUMER_TUNING
brokers, topic, want, settings = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
opened = time.perf_counter()
c = Consumer({"bootstrap.servers": brokers, "group.id": "ceiling", "enable.auto.commit": False,
              **(CONSUMER_TUNING if settings == "ours" else {})})
parts = c.list_topics(topic, timeout=15).topics[topic].partitions
c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
got, t, cpu = 0, time.perf_counter(), time.process_time()
while got < want:
    got += sum(1 for m in c.consume(10000, 5.0) if m.error() is None)
s, cpu = time.perf_counter() - t, time.process_time() - cpu
c.close()
run_s = time.perf_counter() - opened
print(json.dumps({"events": got, "seconds": s, "events_per_s": got / s, "run_s": run_s,
                  "window_cpu_s": cpu}))
"""
# Ours on the same topic: the consume command, its read and apply timed from outside (the
# loop itself is flows.stream_stats.consume's). "poll_s": the first poll to the last batch
# committed in the sink, beside the command's own figures (opening the source and the sink
# to closing both); "window_cpu_s": the process's CPU seconds (all threads) in that window.
OURS_KAFKA = """
import contextlib, io, json, sys, time
from flows.stream_stats.sources import kafka as stream_kafka
from flows.stream_stats.sink import store as stream_sink
from flows.stream_stats import consume
read, apply = stream_kafka.KafkaSource.read, stream_sink.StreamState.apply
marks = {}
def timed_read(self, *args, **kwargs):
    marks.setdefault("first_poll", time.perf_counter())
    marks.setdefault("first_cpu", time.process_time())
    return read(self, *args, **kwargs)
def timed_apply(self, *args, **kwargs):
    result = apply(self, *args, **kwargs)
    marks["last_applied"], marks["last_cpu"] = time.perf_counter(), time.process_time()
    return result
stream_kafka.KafkaSource.read, stream_sink.StreamState.apply = timed_read, timed_apply
out = io.StringIO()
with contextlib.redirect_stdout(out):
    consume.main(sys.argv[1:])
run = json.loads(out.getvalue().strip().splitlines()[-1])
seconds = marks["last_applied"] - marks["first_poll"]
print(json.dumps({**run, "poll_s": seconds, "poll_events_per_s": run["events"] / seconds,
                  "window_cpu_s": marks["last_cpu"] - marks["first_cpu"]}))
"""


# The same XREADGROUP batches of one stream read to EventBatch columns (no sink) by the
# hand RESP reader (flows.stream_stats.sources.redis_streams) and by redis-py with hiredis, each in
# a new group.
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
    rows: list[list] = []
    base_figures = _baseline(dataset, int(BASELINE_EVENTS * args.scale), rows)
    consume = _consumer(rows, base_figures["events_per_s"])
    embedded = consume("ours: embedded source, CPU", str(dataset))
    gpu_ok, why = available()
    if gpu_ok:
        consume("ours: embedded source, GPU", str(dataset), backend="gpu")
    redis = None if args.no_redis else _redis(args, dataset, consume)
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
        markdown.extend(_redis_lines(*redis))
    if kafka is not None:
        markdown.extend(_kafka_lines(kafka))
    markdown.append(SPARK_LINE)
    write_section("stream_stats", "\n".join(markdown))
    print("\n".join(markdown))
    shutil.rmtree(SCRATCH, ignore_errors=True)


def _baseline(dataset: Path, events: int, rows: list[list]) -> dict:
    """The exact per-event baseline's aggregation of the first ``events``, as a table row."""
    code = (
        "import json, time\n"
        "from flows.stream_stats.sources.embedded import read_events\n"
        "from flows.stream_stats.windows import WindowSpec\n"
        "from flows.stream_stats.compute.baseline import baseline_aggregate\n"
        f"events = read_events({str(dataset)!r})[:{events}]\n"
        "t = time.perf_counter()\n"
        "out = baseline_aggregate(events, WindowSpec(60000, 60000, 300000))\n"
        "s = time.perf_counter() - t\n"
        "print(json.dumps({'events': len(events), 'seconds': s, 'events_per_s': len(events)/s,"
        " 'batch_s_max': s}))\n"
    )
    base = measure("baseline: per-event dict", python(code))
    figures = _json(base.output)
    rows.append(
        [
            "baseline: per-event Python dict (aggregation only)",
            figures["events"],
            figures["events_per_s"],
            figures["batch_s_max"],
            base.peak_rss_mb,
            1.0,
        ]
    )
    return figures


def _consumer(rows: list[list], base_events_per_s: float):
    """A function that runs the consume command on a source, adds its row, returns its figures."""

    def consume(
        label: str,
        source: str,
        backend: str = "cpu",
        max_events: int | None = None,
        command: list[str] | None = None,
    ) -> dict:
        sink = SCRATCH / f"{uuid.uuid4().hex[:6]}.duckdb"
        run = measure(
            label,
            [
                *(command or [sys.executable, "-m", "flows.stream_stats.consume"]),
                "consume",
                source,
                str(sink),
                *["--window", "1min", "--watermark", "5min", "--max-batch", "262144"],
                *["--idle", "0.5", "--backend", backend, "--max-seconds", "600"],
                # A stream's run stops at the count produced, as the bare consumer does,
                # instead of waiting --idle for more (that wait is not reading).
                *(["--max-events", str(max_events)] if max_events else []),
            ],
        )
        figures = _json(run.output) | {"cpu_s": run.cpu_s}
        rows.append(
            [
                label,
                figures["events"],
                figures["events_per_s"],
                figures["batch_s_max"],
                run.peak_rss_mb,
                figures["events_per_s"] / base_events_per_s,
            ]
        )
        return figures

    return consume


def _redis(args: argparse.Namespace, dataset: Path, consume) -> tuple[dict, dict, dict]:
    """(ours end to end, the producer, the two readers alone) on a fresh Redis stream."""
    import redis as redis_client

    key = f"bench:stream-stats:{uuid.uuid4().hex[:8]}"
    count = int(REDIS_EVENTS * args.scale)
    produced = measure(
        "producer",
        [
            *[sys.executable, "-m", "flows.stream_stats.producer", "produce", str(dataset)],
            *["--redis", REDIS_URL, "--stream", key, "--max-events", str(count)],
        ],
    )
    producer = _json(produced.output)
    try:
        ours = consume(
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
    return ours, producer, readers


def _redis_lines(ours: dict, producer: dict, readers: dict) -> list[str]:
    """The Redis figures: end to end against the target, and the two readers alone."""
    library = readers["redis-py"]
    return [
        f"- target >= 100,000 events/s end to end from Redis: "
        f"{'met' if ours['events_per_s'] >= 1e5 else 'not met'} "
        f"({ours['events_per_s']:,.0f}; producer {producer['events_per_s']:,.0f} events/s)",
        f"- reading the same XREADGROUP batches of {READ_CHUNK:,} into event columns, no "
        f"sink: the hand RESP reader {readers['hand']['events_per_s']:,.0f} entries/s, "
        + (
            "redis-py with hiredis not measured (pip install hiredis)"
            if library.get("missing")
            else f"redis-py with hiredis {library['events_per_s']:,.0f} entries/s"
        ),
    ]


def _kafka_lines(kafka: dict[str, dict]) -> list[str]:
    """The Kafka figures: ours against the bare consumer, timed alike, and whole runs."""
    ours, same, defaults = kafka["end_to_end"], kafka["ours"], kafka["defaults"]
    ratio = ours["poll_events_per_s"] / same["events_per_s"]
    return [
        f"- Kafka (Tansu 0.6.0, 3 partitions), each side timed from its first poll to its "
        f"last event in hand (ours: committed in the sink): ours {ours['poll_events_per_s']:,.0f} "
        f"events/s, the bare consumer with the same librdkafka settings "
        f"{same['events_per_s']:,.0f}: {ratio:.2f} of it, target >= 0.8 "
        f"{'met' if ratio >= 0.8 else 'not met'}; the bare consumer with librdkafka's "
        f"defaults {defaults['events_per_s']:,.0f} "
        f"({ours['poll_events_per_s'] / defaults['events_per_s']:.2f}); producer "
        f"{kafka['producer']['events_per_s']:,.0f} events/s",
        f"- Kafka whole runs (opening to closing the consumer; ours also the sink, as in the "
        f"table): ours {ours['events_per_s']:,.0f} events/s, the bare consumer "
        f"{same['events'] / same['run_s']:,.0f} with our settings, "
        f"{defaults['events'] / defaults['run_s']:,.0f} with the defaults; CPU seconds of "
        f"each process, interpreter and imports included: ours {ours['cpu_s']:.2f}, the bare "
        f"consumer {same['cpu_s']:.2f} and {defaults['cpu_s']:.2f}",
        _kafka_bound(ours, same),
    ]


def _kafka_bound(ours: dict, same: dict) -> str:
    """The best ratio ours' CPU allows: its work and the broker's spread over every core."""
    import os

    cores = len(os.sched_getaffinity(0))
    least_s = (ours["window_cpu_s"] + ours["broker_cpu_s"]) / cores
    return (
        f"- Kafka CPU bound: in its window ours used {ours['window_cpu_s']:.2f} CPU-s (all "
        f"threads: consume, parse, aggregation, commit) and the broker "
        f"{ours['broker_cpu_s']:.2f}; spread over {cores} cores that is at least "
        f"{least_s:.3f} s of wall, against the bare consumer's {same['seconds']:.3f} s (its "
        f"own CPU {same['window_cpu_s']:.2f} s, the broker's {same['broker_cpu_s']:.2f}): at "
        f"most {same['seconds'] / least_s:.2f} of the bare consumer with this CPU, whatever "
        f"the scheduling"
    )


def _kafka(args: argparse.Namespace, dataset: Path, consume) -> dict[str, dict]:
    """Ours end to end, the bare consumer with our settings and with librdkafka's, the
    producer: on a throwaway broker, the same topic, one after the other; each subject with
    the broker's CPU seconds while it ran."""
    import psutil

    from deployments.kafka_broker import local_broker

    count = int(KAFKA_EVENTS * args.scale)
    figures = {}
    with local_broker() as brokers:
        [broker] = [p for p in psutil.Process().children() if p.name() == "tansu"]

        def broker_cpu() -> float:
            times = broker.cpu_times()
            return times.user + times.system

        url = f"kafka://{brokers}/bench?group=bench"
        produced = measure(
            "producer (Kafka)",
            [
                *[sys.executable, "-m", "flows.stream_stats.producer", "produce", str(dataset)],
                *["--kafka", url, "--max-events", str(count)],
            ],
        )
        figures["producer"] = _json(produced.output)
        for settings in ("ours", "defaults"):
            before = broker_cpu()
            ceiling = measure(
                f"bare confluent-kafka consumer, {settings} settings",
                [*python(CEILING), brokers, "bench", str(count), settings],
            )
            figures[settings] = _json(ceiling.output) | {
                "cpu_s": ceiling.cpu_s,
                "broker_cpu_s": broker_cpu() - before,
            }
        before = broker_cpu()
        figures["end_to_end"] = consume(
            "ours: Kafka topic end to end, CPU", url, max_events=count, command=python(OURS_KAFKA)
        ) | {"broker_cpu_s": broker_cpu() - before}
    return figures


if __name__ == "__main__":
    main()
