"""stream_stats pure logic: windows, watermark, sketches, exactly-once, on real DuckDB files."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from flows.stream_stats.compute.baseline import compare_with_baseline, read_windows
from flows.stream_stats.compute.reduce import reduce_groups
from flows.stream_stats.consume import run_micro_batches
from flows.stream_stats.params import StreamParams
from flows.stream_stats.sink.store import CRASH_ENV, sink_lock
from flows.stream_stats.sources.embedded import (
    EmbeddedSource,
    fraud_dataset,
    read_events,
    synthetic_events,
    write_events_dataset,
)
from flows.stream_stats.windows import WindowSpec, parse_duration_ms
from headroom import BadInput, TerminalError

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["merchant_category", "channel"]


def run(dataset: Path, sink: Path, spec: WindowSpec, max_batch: int, **extra) -> dict:
    return run_micro_batches(
        str(dataset),
        str(sink),
        spec.window_ms,
        spec.slide_ms,
        spec.watermark_ms,
        list(spec.keys),
        max_batch,
        **extra,
    )


@pytest.fixture(scope="module")
def disordered(tmp_path_factory) -> Path:
    """Out-of-order events (jitter of +/- 3 min around sorted times) over 3 hours, 3 files."""
    out = tmp_path_factory.mktemp("disordered")
    events = synthetic_events(
        30_000, seed=3, span_ms=3 * 3_600_000, customers=400, disorder_ms=180_000
    )
    write_events_dataset(out, events, files=3)
    return out


@pytest.mark.parametrize(
    ("window", "slide", "watermark", "max_batch"),
    [
        ("1min", None, "2min", 50_000),  # whole stream in one batch: exact p95 / distinct
        ("1min", None, "2min", 700),  # windows span batches: sketches carry the state
        ("2min", "30s", "1min", 1_500),
    ],  # hopping windows, many late events
)
def test_every_window_matches_the_per_event_baseline(
    disordered, tmp_path, window, slide, watermark, max_batch
):
    params = StreamParams(
        source=str(disordered),
        sink=str(tmp_path / "s.duckdb"),
        window=window,
        slide=slide,
        watermark=watermark,
    )
    spec = params.spec()
    result = run(disordered, tmp_path / "s.duckdb", spec, max_batch)
    events = read_events(disordered)
    assert result["events"] == len(events) and result["drained"]
    assert compare_with_baseline(tmp_path / "s.duckdb", events, spec) == []
    frame = read_windows(tmp_path / "s.duckdb")
    assert frame["late_events"].sum() > 0  # the jitter makes some events late
    if max_batch < 2_000:
        assert (frame["distinct_exact"] == False).any()  # noqa: E712 - sketches carried state


def test_results_do_not_depend_on_batch_size(disordered, tmp_path):
    spec = WindowSpec(60_000, 60_000, 90_000, tuple(KEYS))
    run(disordered, tmp_path / "small.duckdb", spec, 1_000)
    run(disordered, tmp_path / "large.duckdb", spec, 40_000)
    columns = [
        "window_start_ms",
        *KEYS,
        "events",
        "fraud_events",
        "late_events",
        "amount_min",
        "amount_max",
    ]
    small = read_windows(tmp_path / "small.duckdb")[columns]
    large = read_windows(tmp_path / "large.duckdb")[columns]
    assert small.equals(large)


def test_late_and_out_of_order_events_as_specified(tmp_path):
    minute = 60_000
    t0 = 1_704_067_200_000
    # Arrival order: 00:00, 10:00 (watermark -> 05:00), 06:30 (window 06-07 still open:
    # out of order, counted), 01:00 (window 01-02 ended before 05:00: late), 04:59 (window
    # 04-05 ends at 05:00 = watermark: late), 10:30.
    times = [
        t0,
        t0 + 10 * minute,
        t0 + 6 * minute + 30_000,
        t0 + minute,
        t0 + 4 * minute + 59_000,
        t0 + 10 * minute + 30_000,
    ]
    n = len(times)
    events = {
        "ts": np.array(times),
        "customer_id": np.arange(n),
        "amount": np.arange(n) + 1.0,
        "merchant_category": ["grocery_pos"] * n,
        "channel": ["pos"] * n,
        "is_fraud": np.zeros(n, bool),
    }
    write_events_dataset(tmp_path / "d", events)
    spec = WindowSpec(minute, minute, 5 * minute, tuple(KEYS))
    result = run(tmp_path / "d", tmp_path / "s.duckdb", spec, 2)  # one event pair per batch
    assert result["events"] == n and result["late"] == 2
    frame = read_windows(tmp_path / "s.duckdb").set_index("window_start_ms")
    assert frame.loc[t0 + 6 * minute, "events"] == 1  # out of order, inside the watermark
    assert frame.loc[t0 + minute, ["events", "late_events"]].tolist() == [0, 1]
    assert frame.loc[t0 + 4 * minute, ["events", "late_events"]].tolist() == [0, 1]
    assert frame.loc[t0 + 10 * minute, "events"] == 2
    assert not frame.loc[t0 + 10 * minute, "final"]  # its end is past the watermark: open
    assert frame.loc[t0, "final"]
    assert compare_with_baseline(tmp_path / "s.duckdb", read_events(tmp_path / "d"), spec) == []


def test_open_windows_carry_across_runs(tmp_path):
    dataset = fraud_dataset(tmp_path / "d", transactions=20_000, seed=5, files=2, days=1)
    spec = WindowSpec(300_000, 300_000, 600_000, tuple(KEYS))
    first = run(dataset, tmp_path / "s.duckdb", spec, 3_000, max_events=7_000)
    assert first["events"] == 7_000 and not first["drained"]
    second = run(dataset, tmp_path / "s.duckdb", spec, 3_000)
    assert second["drained"] and first["events"] + second["events"] == 20_000
    assert compare_with_baseline(tmp_path / "s.duckdb", read_events(dataset), spec) == []


@pytest.mark.parametrize("point", ["commit-before:2"])
def test_a_killed_consumer_loses_and_repeats_nothing(disordered, tmp_path, point):
    """SIGKILL a real consumer process at a drill point, run again: the totals are exact."""
    sink = tmp_path / "s.duckdb"
    argv = [
        sys.executable,
        "-m",
        "flows.stream_stats.consume",
        "consume",
        str(disordered),
        str(sink),
        "--window",
        "1min",
        "--watermark",
        "2min",
        "--max-batch",
        "4000",
    ]
    env = {**os.environ, CRASH_ENV: point}
    killed = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr[-2000:]
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-2000:]
    spec = StreamParams(source="x", sink="x", window="1min", watermark="2min").spec()
    assert compare_with_baseline(sink, read_events(disordered), spec) == []


def test_parameters_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="window"):
        StreamParams(source="d", sink="s", window="1min", slide="7s")
    with pytest.raises(ValueError, match="keys"):
        StreamParams(source="d", sink="s", keys=["merchant_category", "device"])
    with pytest.raises(BadInput, match="parameter watermark"):
        parse_duration_ms("five minutes", name="watermark")
    assert parse_duration_ms("1min", name="w") == 60_000
    assert parse_duration_ms("250ms", name="w") == 250
    assert parse_duration_ms(2, name="w") == 2_000


def test_a_sink_refuses_another_window_configuration(disordered, tmp_path):
    spec = WindowSpec(60_000, 60_000, 60_000, tuple(KEYS))
    run(disordered, tmp_path / "s.duckdb", spec, 50_000, max_events=1_000)
    other = WindowSpec(30_000, 30_000, 60_000, tuple(KEYS))
    with pytest.raises(BadInput, match="parameter window"):
        run(disordered, tmp_path / "s.duckdb", other, 50_000)


def test_one_consumer_per_sink(tmp_path):
    with sink_lock(tmp_path / "s.duckdb"):
        with pytest.raises(TerminalError, match="in use"):
            with sink_lock(tmp_path / "s.duckdb"):
                pass


def test_a_bad_manifest_names_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BadInput, match="manifest.json"):
        EmbeddedSource(tmp_path)


def _numpy_as_cupy() -> types.SimpleNamespace:
    """numpy under CuPy's names: runs the GPU backend's algorithm on the CPU."""
    shim = types.SimpleNamespace(**{n: getattr(np, n) for n in dir(np) if not n.startswith("_")})
    shim.asnumpy = np.asarray
    return shim


def test_gpu_reduction_algorithm_matches_cpu():
    from flows.stream_stats.compute.gpu import GpuReducer

    rng = np.random.default_rng(0)
    n = 20_000
    gid = rng.integers(0, 500, n)
    amount = np.round(rng.gamma(2, 30, n), 2)
    customer = rng.integers(0, 80, n)
    fraud = rng.random(n) < 0.1
    reducer = GpuReducer.__new__(GpuReducer)
    reducer.cp, reducer.limit = _numpy_as_cupy(), 1
    gpu = reducer._reduce(gid, amount, customer, fraud)
    cpu = reduce_groups(gid, amount, customer, fraud)
    for name in cpu.__dataclass_fields__:
        if name != "amounts":
            assert np.allclose(getattr(gpu, name), getattr(cpu, name)), name
    # Amounts are grouped alike; the order inside a group is each backend's own.
    group = np.repeat(np.arange(len(cpu.counts)), cpu.counts)
    by_group = [r.amounts[np.lexsort((r.amounts, group))] for r in (gpu, cpu)]
    assert np.array_equal(*by_group)


def _gpu_ready() -> str | None:
    from flows.stream_stats.compute.gpu import available

    ok, why = available()
    return None if ok else why


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_ready() is not None, reason=f"no usable GPU: {_gpu_ready()}")
def test_gpu_backend_gives_the_cpu_answers(disordered, tmp_path):
    spec = WindowSpec(60_000, 60_000, 120_000, tuple(KEYS))
    run(disordered, tmp_path / "cpu.duckdb", spec, 5_000, backend="cpu")
    run(disordered, tmp_path / "gpu.duckdb", spec, 5_000, backend="gpu")
    columns = [
        "window_start_ms",
        *KEYS,
        "events",
        "fraud_events",
        "late_events",
        "amount_p95",
        "distinct_customers",
    ]
    cpu = read_windows(tmp_path / "cpu.duckdb")[columns]
    gpu = read_windows(tmp_path / "gpu.duckdb")[columns]
    assert cpu.equals(gpu)


def test_exact_p95_is_the_nearest_rank_for_every_group_size():
    rng = np.random.default_rng(1)
    sizes = np.concatenate([np.arange(1, 120), [500, 1_000]])
    gid = np.repeat(np.arange(len(sizes)), sizes)
    order = rng.permutation(len(gid))  # groups interleaved, as windows x keys arrive
    gid = gid[order]
    amount = np.round(rng.gamma(2, 30, len(gid)), 2)
    red = reduce_groups(gid, amount, np.zeros(len(gid), np.int64), np.zeros(len(gid), bool))
    for group, p95 in zip(red.gids.tolist(), red.p95.tolist(), strict=True):
        values = np.sort(amount[gid == group])
        assert p95 == values[int(np.ceil(0.95 * len(values))) - 1]
    assert red.mins.tolist() == [amount[gid == g].min() for g in red.gids.tolist()]
    assert red.maxs.tolist() == [amount[gid == g].max() for g in red.gids.tolist()]
