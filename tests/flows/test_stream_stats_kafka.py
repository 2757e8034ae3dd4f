"""stream_stats against a real Kafka-protocol broker (Tansu on 127.0.0.1): exactly once."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import duckdb
import pytest

from flows.stream_stats.compute.baseline import compare_with_baseline
from flows.stream_stats.consume import run_micro_batches
from flows.stream_stats.params import StreamParams
from flows.stream_stats.sink.store import CRASH_ENV
from flows.stream_stats.sources.embedded import fraud_dataset, read_events
from flows.stream_stats.sources.kafka import KafkaSource, parse_kafka_source
from headroom.errors import BadInput

ROOT = Path(__file__).resolve().parents[2]
# The watermark covers the dataset's day: partitions are consumed in any interleaving, and
# no event may become late because another partition ran ahead (see
# flows.stream_stats.sources.kafka).
SPEC = StreamParams(source="x", sink="x", window="1min", watermark="2d").spec()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return fraud_dataset(tmp_path_factory.mktemp("fraud"), transactions=9_000, seed=5, files=3)


@pytest.fixture
def topic_url(kafka_broker) -> str:
    return f"kafka://{kafka_broker}/tx-{uuid.uuid4().hex[:8]}?group=stats"


def produce(dataset: Path, url: str, *extra: str, wait: bool = True) -> subprocess.Popen:
    """The producer command, as an operator runs it."""
    argv = [
        sys.executable,
        "-m",
        "flows.stream_stats.producer",
        "produce",
        str(dataset),
        "--kafka",
        url,
    ]
    process = subprocess.Popen(
        [*argv, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if wait:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        assert json.loads(out.strip().splitlines()[-1])["events"] == 9_000
    return process


def consume(url: str, sink: Path, idle_s: float = 1.0, max_batch: int = 1_500) -> dict:
    return run_micro_batches(
        url,
        str(sink),
        SPEC.window_ms,
        SPEC.slide_ms,
        SPEC.watermark_ms,
        list(SPEC.keys),
        max_batch,
        idle_s=idle_s,
    )


def consumer_argv(url: str, sink: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flows.stream_stats.consume",
        "consume",
        url,
        str(sink),
        "--window",
        "1min",
        "--watermark",
        "2d",
        "--max-batch",
        "1000",
        "--idle",
        "1",
    ]


def sink_offsets(sink: Path) -> dict[int, int]:
    with duckdb.connect(str(sink), read_only=True) as db:
        return dict(
            db.execute("SELECT source_partition, next_offset FROM stream_offsets").fetchall()
        )


def test_round_trip_through_produce_three_partitions_keys_spread(dataset, topic_url, tmp_path):
    produce(dataset, topic_url)
    result = consume(topic_url, tmp_path / "s.duckdb")
    assert result["events"] == 9_000 and result["rejected"] == 0
    assert compare_with_baseline(tmp_path / "s.duckdb", read_events(dataset), SPEC) == []
    offsets = sink_offsets(tmp_path / "s.duckdb")
    assert sorted(offsets) == [0, 1, 2] and sum(offsets.values()) == 9_000
    assert min(offsets.values()) > 1_000  # keys spread over all three partitions
    # Key = customer id: one customer's events all land in one partition.
    from confluent_kafka import Consumer

    target = parse_kafka_source(topic_url)
    reader = Consumer(
        {"bootstrap.servers": target.brokers, "group.id": "check", "auto.offset.reset": "earliest"}
    )
    reader.subscribe([target.topic])
    where: dict[bytes, set[int]] = {}
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 9_000 and time.monotonic() < deadline:
        for message in reader.consume(5_000, 1.0):
            customer = json.loads(message.value())["customer_id"]
            assert message.key() == str(customer).encode()
            where.setdefault(message.key(), set()).add(message.partition())
            seen += 1
    reader.close()
    assert seen == 9_000
    assert all(len(partitions) == 1 for partitions in where.values())


def parse_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kafka-parse")]


def test_chunks_parsed_beside_the_consumer_give_the_windows_of_the_baseline(
    dataset, topic_url, tmp_path, monkeypatch
):
    """Many consume() chunks per micro-batch, parsed on the parse threads (chunks finishing
    out of order) while the next are consumed: the same windows as the per-event baseline,
    and no thread left after."""
    from flows.stream_stats.sources import kafka as stream_kafka

    monkeypatch.setattr(stream_kafka, "FETCH_CHUNK", 97)
    produce(dataset, topic_url)
    result = consume(topic_url, tmp_path / "s.duckdb", max_batch=2_000)
    assert result["events"] == 9_000 and result["rejected"] == 0
    assert compare_with_baseline(tmp_path / "s.duckdb", read_events(dataset), SPEC) == []
    assert sum(sink_offsets(tmp_path / "s.duckdb").values()) == 9_000
    assert parse_threads() == []


def test_group_offsets_in_kafka_follow_the_sink_for_lag(dataset, topic_url, tmp_path):
    from confluent_kafka import Consumer, TopicPartition

    produce(dataset, topic_url)
    result = consume(topic_url, tmp_path / "s.duckdb")
    assert result["events"] == 9_000 and result["lag"]["lag"] == 0
    target = parse_kafka_source(topic_url)
    reader = Consumer({"bootstrap.servers": target.brokers, "group.id": target.group})
    committed = reader.committed([TopicPartition(target.topic, p) for p in range(3)], timeout=30)
    reader.close()
    assert {tp.partition: tp.offset for tp in committed} == sink_offsets(tmp_path / "s.duckdb")


def test_several_brokers_any_one_answering_will_do(dataset, kafka_broker, tmp_path):
    from deployments.ports import free_port

    url = f"kafka://127.0.0.1:{free_port()},{kafka_broker}/tx-{uuid.uuid4().hex[:8]}?group=g"
    process = produce(dataset, url, "--partitions", "2", "--max-events", "3000", wait=False)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["events"] == 3_000
    result = consume(url, tmp_path / "s.duckdb")
    assert result["events"] == 3_000
    offsets = sink_offsets(tmp_path / "s.duckdb")
    assert sorted(offsets) == [0, 1] and sum(offsets.values()) == 3_000  # --partitions 2


def test_security_settings_come_from_the_environment_as_librdkafka_takes_them():
    from confluent_kafka import Consumer

    from flows.stream_stats.sources.kafka import client_config

    target = parse_kafka_source("kafka://127.0.0.1:1,127.0.0.1:2/tx")
    environ = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "stats",
        "KAFKA_SASL_PASSWORD": "s3cret",
        "KAFKA_SSL_CA_LOCATION": "/etc/ssl/certs/ca-certificates.crt",
    }
    config = client_config(target, environ)
    assert config == {
        "bootstrap.servers": "127.0.0.1:1,127.0.0.1:2",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "stats",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ssl/certs/ca-certificates.crt",
    }
    # librdkafka knows every one of these settings (a wrong name fails here).
    Consumer(config | {"group.id": "g"}).close()
    assert client_config(target, {}) == {"bootstrap.servers": "127.0.0.1:1,127.0.0.1:2"}


def test_the_kafka_deployment_reads_a_kafka_topic_like_the_redis_one():
    from deployments.serve import load_deployment_specs
    from flows.stream_stats.params import StreamParams

    specs = {spec["name"]: spec for spec in load_deployment_specs()}
    kafka, redis = specs["stream-stats-kafka"], specs["stream-stats-redis"]
    source = kafka["parameters"]["source"]
    target = parse_kafka_source(source)
    assert (target.topic, target.group) == ("fraud-transactions", "stream-stats")
    flow_params = {k: v for k, v in kafka["parameters"].items() if k != "chunk_scale"}
    StreamParams(**flow_params)  # the flow's own model takes them (chunk_scale is headroom's)
    assert kafka["entrypoint"] == redis["entrypoint"]
    for key in ("tags", "schedules", "concurrency_limit", "work_pool"):
        assert kafka[key] == redis[key], key


@pytest.mark.parametrize("point", ["after-read:3", "after-commit:3"])
def test_sigkill_mid_run_then_run_again_counts_each_event_once(dataset, topic_url, tmp_path, point):
    produce(dataset, topic_url)
    sink = tmp_path / "s.duckdb"
    killed = subprocess.run(
        consumer_argv(topic_url, sink),
        cwd=ROOT,
        env={**os.environ, CRASH_ENV: point},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    with duckdb.connect(str(sink), read_only=True) as db:
        events_before = db.execute("SELECT events FROM stream_progress").fetchone()[0]
    assert 0 < events_before < 9_000  # killed mid-run, with work committed and work left
    again = subprocess.run(
        consumer_argv(topic_url, sink), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["events"] == 9_000 - events_before
    assert compare_with_baseline(sink, read_events(dataset), SPEC) == []
    assert sum(sink_offsets(sink).values()) == 9_000


@pytest.mark.parametrize("chunk", [10_000, 2])
def test_malformed_messages_are_rejected_with_partition_and_offset(
    kafka_broker, tmp_path, monkeypatch, chunk
):
    """One consume() chunk for all messages, or good and bad ones in chunks of their own."""
    from confluent_kafka import Producer

    from flows.stream_stats.sources import kafka as stream_kafka
    from flows.stream_stats.sources.kafka import create_topic

    monkeypatch.setattr(stream_kafka, "FETCH_CHUNK", chunk)

    url = f"kafka://{kafka_broker}/bad-{uuid.uuid4().hex[:8]}?group=stats"
    create_topic(parse_kafka_source(url), 3)
    good = {
        "transaction_id": 1,
        "ts": 1_704_067_200_000,
        "customer_id": 7,
        "merchant_category": "travel",
        "channel": "online",
        "amount": 12.5,
        "is_fraud": False,
    }
    values = [
        json.dumps(good).encode(),
        b"not json",
        json.dumps({**good, "amount": "abc"}).encode(),
        json.dumps({k: v for k, v in good.items() if k != "ts"}).encode(),
        b'{"transaction_id": 2, "ts": 1704067200000, "customer_id": 7, "merchant_category":'
        b' "travel", "channel": "online", "amount": NaN, "is_fraud": false}',
        json.dumps([1, 2]).encode(),
        json.dumps({**good, "transaction_id": 3, "amount": 7.5}).encode(),
    ]
    delivered: list[tuple[int, int]] = []
    producer = Producer({"bootstrap.servers": kafka_broker})
    for value in values:
        producer.produce(
            parse_kafka_source(url).topic,
            key=b"7",
            value=value,
            on_delivery=lambda err, msg: delivered.append((msg.partition(), msg.offset())),
        )
    assert producer.flush(30) == 0
    result = consume(url, tmp_path / "s.duckdb")
    assert result["events"] == 2 and result["rejected"] == 5
    with duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True) as db:
        rejects = db.execute("SELECT entry_id, reason FROM stream_rejects").fetchall()
        amount = db.execute("SELECT sum(amount_sum) FROM window_stats").fetchone()[0]
    expected = {f"partition {p} offset {o}" for p, o in (delivered[i] for i in (1, 2, 3, 4, 5))}
    assert {entry for entry, _ in rejects} == expected
    assert amount == 20.0
    reasons = " ".join(reason for _, reason in rejects)
    assert "not JSON" in reasons and "field amount" in reasons and "lacks ['ts']" in reasons
    assert parse_threads() == []


def test_another_group_member_joins_then_leaves_nothing_twice_or_lost(dataset, topic_url, tmp_path):
    """A member of the same group rebalancing the group's partitions among its members, and
    committing its own offsets, never moves the sink's consumer: it holds every partition by
    assignment at the sink's offsets."""
    from confluent_kafka import Consumer

    from flows.stream_stats.sources.kafka import create_topic

    target = parse_kafka_source(topic_url)
    create_topic(target, 3)
    producer = produce(dataset, topic_url, "--rate", "1500", wait=False)
    intruder: dict[str, int] = {"assigned": 0, "messages": 0}

    def join_then_leave() -> None:
        assert consuming.wait(60)
        time.sleep(1.0)
        member = Consumer(
            {
                "bootstrap.servers": target.brokers,
                "group.id": target.group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                "auto.commit.interval.ms": 200,
                "session.timeout.ms": 6000,
            }
        )
        member.subscribe(
            [target.topic],
            on_assign=lambda c, parts: intruder.__setitem__("assigned", len(parts)),
        )
        held = time.monotonic() + 8
        while time.monotonic() < held:
            intruder["messages"] += len(member.consume(500, 0.2))
        member.close()

    consuming = threading.Event()

    class Assigned(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "assigned partitions" in record.getMessage():
                consuming.set()

    handler = Assigned()
    logging.getLogger("flows.stream_stats.sources.kafka").addHandler(handler)
    logging.getLogger("flows.stream_stats.sources.kafka").setLevel(logging.INFO)
    thread = threading.Thread(target=join_then_leave)
    thread.start()
    try:
        result = consume(topic_url, tmp_path / "s.duckdb", idle_s=4.0, max_batch=500)
    finally:
        thread.join()
        logging.getLogger("flows.stream_stats.sources.kafka").removeHandler(handler)
    producer.communicate(timeout=60)
    assert producer.returncode == 0
    assert intruder["assigned"] == 3 and intruder["messages"] > 0  # it held the group
    assert result["events"] == 9_000
    assert compare_with_baseline(tmp_path / "s.duckdb", read_events(dataset), SPEC) == []
    assert sum(sink_offsets(tmp_path / "s.duckdb").values()) == 9_000


def test_source_url_is_checked_before_any_connection():
    with pytest.raises(BadInput, match="credentials"):
        parse_kafka_source("kafka://user:secret@127.0.0.1:9092/tx")
    with pytest.raises(BadInput, match="unknown options"):
        parse_kafka_source("kafka://127.0.0.1:9092/tx?password=x")
    with pytest.raises(BadInput, match="TOPIC"):
        parse_kafka_source("kafka://127.0.0.1:9092/")
    target = parse_kafka_source("kafka://a:1,b:2/tx?group=g")
    assert (target.brokers, target.topic, target.group) == ("a:1,b:2", "tx", "g")


def test_closed_port_names_the_broker_and_the_parameter():
    from deployments.ports import free_port

    port, other = free_port(), free_port()
    source = KafkaSource(f"kafka://127.0.0.1:{port},127.0.0.1:{other}/tx")
    source.consumer = None
    started = time.monotonic()
    with pytest.raises(
        ConnectionError, match=rf"parameter source: .*127\.0\.0\.1:{port}: .*127\.0\.0\.1:{other}: "
    ):
        source.start((-1, -1))
    assert time.monotonic() - started < 30
    source.close()


def test_messages_below_the_sinks_offsets_are_dropped_parsed_or_rejected_alike():
    """Chunks parsed whole (the fast path) or one message at a time (some value is not an
    event) keep the same events: those at or past the sink's next offset of their partition."""
    from confluent_kafka import Message

    from flows.stream_stats.sources.kafka import chunks_to_batch, parse_chunk

    def message(partition: int, offset: int, value: bytes | None = None) -> Message:
        event = {
            "transaction_id": 10 * partition + offset,
            "ts": 1_704_067_200_000 + offset,
            "customer_id": 7,
            "merchant_category": "travel",
            "channel": "online",
            "amount": 1.5,
            "is_fraud": False,
        }
        value = json.dumps(event).encode() if value is None else value
        return Message(topic="t", partition=partition, offset=offset, value=value)

    first = [message(0, offset) for offset in range(3)]
    second = [message(1, offset) for offset in range(3)]
    sink = {0: 2, 1: 1}
    batch = chunks_to_batch([parse_chunk(first), parse_chunk(second)], sink)
    assert batch is not None and batch.offsets == {0: 3, 1: 3}
    assert batch.transaction_id.tolist() == [2, 11, 12] and batch.rejects == []
    second[0] = message(1, 0, b"not json")  # below the sink's offset: neither kept nor rejected
    batch = chunks_to_batch([parse_chunk(first), parse_chunk(second)], sink)
    assert batch is not None and batch.transaction_id.tolist() == [2, 11, 12]
    assert batch.rejects == []
    second[1] = message(1, 1, b"[]")
    batch = chunks_to_batch([parse_chunk(first), parse_chunk(second)], sink)
    assert batch is not None and batch.transaction_id.tolist() == [2, 12]
    assert [where for where, _ in batch.rejects] == ["partition 1 offset 1"]
    assert batch.id_hi.tolist() == [0, 1] and batch.id_lo.tolist() == [2, 2]
    assert chunks_to_batch([parse_chunk(first[:2])], sink) is None  # all applied already
