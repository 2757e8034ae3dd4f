"""stream_stats against the real Redis on 127.0.0.1:6379: produce, consume, kill, consume again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flows.stream_stats.compute.baseline import compare_with_baseline, read_windows
from flows.stream_stats.consume import run_micro_batches
from flows.stream_stats.params import StreamParams
from flows.stream_stats.sink.store import CRASH_ENV
from flows.stream_stats.sources.embedded import (
    fraud_dataset,
    read_events,
    synthetic_events,
    write_events_dataset,
)
from flows.stream_stats.sources.resp import RespConnection

ROOT = Path(__file__).resolve().parents[2]
SPEC = StreamParams(source="x", sink="x", window="1min", watermark="3min").spec()


# One entry with every field in canonical form, as the producer writes it.
CANONICAL_ENTRY = [
    ("transaction_id", "1"),
    ("ts", "1704067200000"),
    ("customer_id", "7"),
    ("merchant_category", "travel"),
    ("channel", "online"),
    ("amount", "12.5"),
    ("is_fraud", "0"),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A fraud_synth dataset: 12 k transactions over a day (real generator when present)."""
    return fraud_dataset(
        tmp_path_factory.mktemp("fraud"), transactions=12_000, seed=11, files=3, days=1
    )


@pytest.fixture
def stream(redis_url):
    """A unique stream key, deleted afterwards."""
    import redis

    key = f"test:stream-stats:{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    yield key
    client.delete(key)
    client.close()


def source_url(redis_url: str, stream: str) -> str:
    return f"{redis_url}?stream={stream}&group=stats"


def produce(dataset: Path, redis_url: str, stream: str) -> dict:
    """Replay the dataset with the producer command, as an operator would."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.stream_stats.producer",
            "produce",
            str(dataset),
            "--redis",
            redis_url,
            "--stream",
            stream,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def consume(redis_url: str, stream: str, sink: Path, **extra) -> dict:
    return run_micro_batches(
        source_url(redis_url, stream),
        str(sink),
        SPEC.window_ms,
        SPEC.slide_ms,
        SPEC.watermark_ms,
        list(SPEC.keys),
        extra.pop("max_batch", 2_000),
        idle_s=0.3,
        **extra,
    )


def consumer_argv(redis_url: str, stream: str, sink: Path, max_batch: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flows.stream_stats.consume",
        "consume",
        source_url(redis_url, stream),
        str(sink),
        "--window",
        "1min",
        "--watermark",
        "3min",
        "--max-batch",
        str(max_batch),
        "--idle",
        "0.3",
    ]


def group_state(redis_url: str, stream: str) -> dict:
    conn = RespConnection(redis_url)
    try:
        for info in conn.command("XINFO", "GROUPS", stream):
            fields = dict(zip(info[::2], info[1::2], strict=False))
            if fields[b"name"] == b"stats":
                return {"pending": fields[b"pending"], "lag": fields[b"lag"]}
    finally:
        conn.close()
    return {}


def test_produced_events_give_exact_windows(dataset, redis_url, stream, tmp_path):
    produced = produce(dataset, redis_url, stream)
    events = read_events(dataset)
    assert produced["events"] == len(events)
    result = consume(redis_url, stream, tmp_path / "s.duckdb")
    assert result["events"] == len(events) and result["rejected"] == 0
    assert compare_with_baseline(tmp_path / "s.duckdb", events, SPEC) == []
    assert group_state(redis_url, stream) == {"pending": 0, "lag": 0}  # all acknowledged


@pytest.mark.parametrize("point", ["after-read:3", "after-commit:3"])
def test_kill_at_the_worst_moments_then_run_again(dataset, redis_url, stream, tmp_path, point):
    """after-read: entries delivered, not committed; after-commit: committed, not acked."""
    produce(dataset, redis_url, stream)
    sink = tmp_path / "s.duckdb"
    env = {**os.environ, CRASH_ENV: point}
    killed = subprocess.run(
        consumer_argv(redis_url, stream, sink, 1_500),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert group_state(redis_url, stream)["pending"] > 0  # the dead consumer left entries
    result = consume(redis_url, stream, tmp_path / "s.duckdb")
    if point.startswith("after-commit"):
        assert result["skipped"] > 0  # redelivered entries at or below the committed ID
    assert compare_with_baseline(sink, read_events(dataset), SPEC) == []
    assert group_state(redis_url, stream) == {"pending": 0, "lag": 0}


def test_sigkill_mid_run_while_the_producer_writes(redis_url, stream, tmp_path):
    """A consumer killed at an arbitrary moment while events arrive; the rerun is exact."""
    events = synthetic_events(
        15_000, seed=21, span_ms=3 * 3_600_000, customers=300, disorder_ms=100_000
    )
    write_events_dataset(tmp_path / "d", events, files=2)
    producer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.stream_stats.producer",
            "produce",
            str(tmp_path / "d"),
            "--redis",
            redis_url,
            "--stream",
            stream,
            "--rate",
            "6000",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sink = tmp_path / "s.duckdb"
    consumer = subprocess.Popen(
        consumer_argv(redis_url, stream, sink, 500),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    commits = 0
    deadline = time.monotonic() + 30
    while commits < 4 and time.monotonic() < deadline:
        line = consumer.stderr.readline()
        commits += line.startswith("committed batch")
    consumer.send_signal(signal.SIGKILL)
    consumer.wait(timeout=10)
    assert commits >= 4 and consumer.returncode == -signal.SIGKILL
    producer.communicate(timeout=30)
    assert producer.returncode == 0
    consume(redis_url, stream, sink)
    assert compare_with_baseline(sink, read_events(tmp_path / "d"), SPEC) == []


def test_malformed_and_reordered_entries(redis_url, stream, tmp_path):
    """Entries with other field orders are read; unparseable ones are rejected, not lost."""
    conn = RespConnection(redis_url)
    good = CANONICAL_ENTRY
    conn.command("XADD", stream, "*", *[x for pair in good for x in pair])
    conn.command("XADD", stream, "*", *[x for pair in reversed(good) for x in pair])
    bad = [(k, "twelve" if k == "amount" else v) for k, v in good]
    conn.command("XADD", stream, "*", *[x for pair in bad for x in pair])
    conn.command("XADD", stream, "*", "ts", "1704067200000")  # most fields missing
    conn.close()
    result = consume(redis_url, stream, tmp_path / "s.duckdb")
    assert result["events"] == 2 and result["rejected"] == 2
    frame = read_windows(tmp_path / "s.duckdb")
    assert frame["events"].sum() == 2 and frame["amount_sum"].sum() == 25.0
    import duckdb

    with duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True) as db:
        reasons = [r[0] for r in db.execute("SELECT reason FROM stream_rejects").fetchall()]
    assert any("amount" in r for r in reasons) and any("missing" in r for r in reasons)
    assert group_state(redis_url, stream) == {"pending": 0, "lag": 0}


def _reply(entries: list[tuple[str, list[tuple[str, str]]]]) -> bytes:
    """The entries part of an XREADGROUP reply, as Redis writes it."""

    def bulk(text: str) -> bytes:
        return b"$%d\r\n%s\r\n" % (len(text.encode()), text.encode())

    parts = []
    for entry_id, fields in entries:
        parts.append(b"*2\r\n" + bulk(entry_id) + b"*%d\r\n" % (2 * len(fields)))
        parts.extend(bulk(name) + bulk(value) for name, value in fields)
    return b"".join(parts)


def test_canonical_parser_reads_what_float_and_int_read():
    """Thousands of entries (several parse slices, labels merged): the same as int()/float()."""
    import numpy as np

    from flows.stream_stats.sources.resp_bulk import parse_canonical

    rng = np.random.default_rng(7)
    count = 20_000
    labels = ["travel", "grocery_pos", "misc_net", "kids_pets", "home"]
    amounts = [
        f"{x:.{d}f}"
        for x, d in zip(rng.gamma(2, 40, count), rng.integers(0, 4, count), strict=True)
    ]
    entries = [
        (
            f"{1_704_067_200_000 + i // 3}-{i % 3}",
            [
                ("transaction_id", str(i * 7919)),
                ("ts", str(1_704_067_200_000 + int(rng.integers(0, 10**9)))),
                ("customer_id", str(int(rng.integers(0, 10 ** int(rng.integers(1, 12)))))),
                # Later slices see labels the first one did not.
                ("merchant_category", labels[int(rng.integers(0, 2 + i * 3 // count))]),
                ("channel", ["pos", "online"][i % 2]),
                ("amount", amounts[i]),
                ("is_fraud", str(i % 2)),
            ],
        )
        for i in range(count)
    ]
    parsed = parse_canonical(_reply(entries), count)
    assert parsed is not None and parsed.count == count
    for name in ("transaction_id", "ts", "customer_id", "is_fraud"):
        expected = [int(dict(fields)[name]) for _, fields in entries]
        assert parsed.columns[name].tolist() == expected, name
    assert parsed.columns["amount"].tolist() == [float(a) for a in amounts]
    for name in ("merchant_category", "channel"):
        codes, names = parsed.columns[name]
        assert names == sorted(names)
        assert [names[c] for c in codes.tolist()] == [dict(f)[name] for _, f in entries]
    assert [
        f"{h}-{lo}" for h, lo in zip(parsed.id_hi.tolist(), parsed.id_lo.tolist(), strict=True)
    ] == [entry_id for entry_id, _ in entries]
    assert parsed.ack_args == b"".join(b"$%d\r\n%s\r\n" % (len(i), i.encode()) for i, _ in entries)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", "12.5x"),
        ("amount", "1.2.3"),
        ("amount", "nan"),  # float() reads these; the entry-by-entry path rejects them by name
        ("amount", "inf"),
        ("customer_id", "-4"),
        ("ts", "12a"),
        ("channel", ""),
    ],
)
def test_canonical_parser_declines_what_it_cannot_read_exactly(field, value):
    from flows.stream_stats.sources.resp_bulk import parse_canonical

    fields = CANONICAL_ENTRY
    odd = [(k, value if k == field else v) for k, v in fields]
    reply = _reply([("1-0", fields), ("1-1", odd)])
    assert parse_canonical(_reply([("1-0", fields)]), 1) is not None
    assert parse_canonical(reply, 2) is None


def test_a_slow_canonical_reply_still_takes_the_fast_path():
    """Redis pausing mid-reply (a large XACK, a loaded machine) is waited out, not misread."""
    import socket
    import threading

    from flows.stream_stats.sources.resp_bulk import ParsedEntries

    fields = CANONICAL_ENTRY
    reply = _reply([(f"1-{i}", fields) for i in range(3)])
    ours, server = socket.socketpair()
    conn = RespConnection.__new__(RespConnection)
    conn.sock, conn.buf, conn.pos = ours, bytearray(), 0

    def serve() -> None:
        server.sendall(reply[: len(reply) // 2])
        time.sleep(0.5)  # longer than the first patience of 0.1 s
        server.sendall(reply[len(reply) // 2 :])

    writer = threading.Thread(target=serve)
    writer.start()
    try:
        entries = conn.read_entries(3)
    finally:
        writer.join()
        ours.close()
        server.close()
    assert isinstance(entries, ParsedEntries) and entries.id_lo.tolist() == [0, 1, 2]
