"""stream_stats on a disk that fills up: the failed COMMIT is the error raised (not ROLLBACK's
"no transaction is active"), and once space is freed a re-run loses and repeats nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import duckdb
import pytest

from flows.stream_stats.compute.baseline import compare_with_baseline
from flows.stream_stats.consume import run_micro_batches
from flows.stream_stats.params import StreamParams
from flows.stream_stats.sources.embedded import read_events, synthetic_events, write_events_dataset
from flows.stream_stats.windows import WindowSpec


def _consume(events: Path, sink: Path, spec: WindowSpec) -> dict:
    return run_micro_batches(
        str(events),
        str(sink),
        spec.window_ms,
        spec.slide_ms,
        spec.watermark_ms,
        list(spec.keys),
        2_000,
    )


def test_a_full_disk_names_the_failed_commit_and_a_rerun_is_exact(tmp_path, small_disk):
    events = tmp_path / "events"
    write_events_dataset(
        events,
        synthetic_events(30_000, seed=3, span_ms=3 * 3_600_000, customers=400, disorder_ms=180_000),
        files=3,
    )
    spec = StreamParams(source="x", sink="x", window="1min", watermark="2min").spec()
    disk = small_disk("1m")  # the whole sink needs about 2.6 MB
    sink = disk / "sink.duckdb"
    with pytest.raises(duckdb.Error) as caught:
        _consume(events, sink, spec)
    message = str(caught.value)
    assert "No space left on device" in message and "sink.duckdb.wal" in message
    assert "cannot rollback" not in message
    # Space freed: the same run again finishes the stream, every window exactly once.
    subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
    again = _consume(events, sink, spec)
    assert again["drained"] and 0 < again["events"] < 30_000
    assert compare_with_baseline(sink, read_events(events), spec) == []
