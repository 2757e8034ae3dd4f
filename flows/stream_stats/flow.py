"""stream_stats: windowed statistics over the fraud_synth transaction stream, on CPU or GPU.

A bounded run (``max_duration`` / ``max_events``; the deployment starts the next one) calls a
budgeted micro-batch task over and over. Each call runs in a guarded child under the
``stream-stats`` tag's memory cap (the ``gpu`` tag, 10 slots, for the GPU backend), consumes
micro-batches of at most ``max_batch`` events and commits every one of them with its stream
position (flows.stream_stats.consume). An out-of-memory retries the call with a smaller
micro-batch; what was committed stays committed, so nothing is lost or counted twice.
"""

import functools
import pathlib
import time
from typing import Any

from prefect import flow, get_run_logger

from flows.common.flow import publish_artifact, run_if_main
from flows.common.params import bad_parameter, is_url, signature_from
from flows.stream_stats.compute.baseline import read_windows
from flows.stream_stats.consume import run_micro_batches
from flows.stream_stats.params import StreamParams
from flows.stream_stats.sink.store import sink_lock
from flows.stream_stats.sources.embedded import load_manifest
from flows.stream_stats.windows import parse_duration_ms
from headroom import Chunking
from headroom.budget import Budget, GpuDevice
from headroom.prefect import FLOW_HOOKS, ChunkScale, budgeted_task

# Peak bytes per event of a micro-batch: parse buffers, columns, sort temporaries.
BYTES_PER_EVENT = 1_200.0
SLICE_S = 60.0  # one task call at most this long: a retry redoes at most one batch


@functools.cache
def micro_batch_task(tag: str, max_batch: int) -> Any:
    """The budgeted task for a tag (stream-stats or gpu) whose micro-batch starts at max_batch."""
    return budgeted_task(
        run_micro_batches,
        tag=tag,
        chunk=Chunking(
            "max_batch",
            default=max_batch,
            floor=min(1_000, max_batch),
            bytes_per_row=BYTES_PER_EVENT,
            ceiling=max_batch,
        ),
        input_bytes=None,
        oom_retries=4,
        retries=2,
        transient=(ConnectionError,),
        name="stream-micro-batches" if tag != "gpu" else "stream-micro-batches-gpu",
        extra_tags=("stream-stats",) if tag == "gpu" else (),
    )


def resolve_backend(requested: str) -> tuple[str, str]:
    """(cpu|gpu, why): auto picks the GPU when NVML sees one and CuPy imports."""
    if requested == "cpu":
        return "cpu", "requested"
    from flows.stream_stats.compute.gpu import available

    ok, why = available()
    if requested == "gpu" and not ok:
        raise bad_parameter("backend", f"gpu requested but {why}")
    return ("gpu", why) if ok else ("cpu", f"auto: {why}")


@flow(name="stream-stats", **FLOW_HOOKS)
@signature_from(StreamParams)
def stream_stats(
    source: str,
    sink: str,
    window: str = "1min",
    slide: str | None = None,
    watermark: str = "5min",
    max_batch: int = 262_144,
    max_duration: str = "4min",
    max_events: int | None = None,
    backend: str = "auto",
    keys: list[str] | None = None,
    chunk_scale: ChunkScale = 1.0,
) -> dict[str, Any]:
    """Consume the stream into per-(window, key) statistics in a DuckDB sink, for a while."""
    params = StreamParams.from_call(locals())
    if not is_url(params.source) and not load_manifest(params.source):
        # A dataset is replayed, not waited on: with no file there is nothing to consume.
        raise bad_parameter("source", f"{params.source} lists no transaction files")
    logger = get_run_logger()
    chosen, why = resolve_backend(params.backend)
    logger.info("backend %s (%s)", chosen, why)
    started = time.monotonic()
    with sink_lock(params.sink):
        calls = _consume(params, chosen, chunk_scale, started)
    summary = _summarise(calls, time.monotonic() - started, chosen)
    _publish(params, summary, calls, chosen)
    logger.info(
        "%s events in %.1f s (%.0f/s), %d late, lag %s",
        summary["events"],
        summary["seconds"],
        summary["events_per_s"],
        summary["late"],
        summary["lag"],
    )
    return summary


def _consume(
    params: StreamParams, backend: str, chunk_scale: float, started: float
) -> list[dict[str, Any]]:
    """Call the micro-batch task until the run's time (from ``started``) or events are spent,
    or the source is drained; each call's record."""
    task = micro_batch_task("gpu" if backend == "gpu" else "stream-stats", params.max_batch)
    duration_s = parse_duration_ms(params.max_duration, name="max_duration") / 1000
    calls: list[dict[str, Any]] = []
    events = 0
    while True:
        left = duration_s - (time.monotonic() - started)
        if left <= 0.5 or (params.max_events is not None and events >= params.max_events):
            return calls
        result = task(
            **params.consume_arguments(),
            backend=backend,
            max_events=None if params.max_events is None else params.max_events - events,
            max_seconds=min(SLICE_S, left),
            idle_s=1.0,
            chunk_scale=chunk_scale,
        )
        calls.append(result)
        events += result["events"]
        if result["drained"]:
            return calls


def _summarise(calls: list[dict[str, Any]], seconds: float, backend: str) -> dict[str, Any]:
    busy = sum(c["seconds"] for c in calls)
    events = sum(c["events"] for c in calls)
    return {
        "events": events,
        "late": sum(c["late"] for c in calls),
        "skipped": sum(c["skipped"] for c in calls),
        "rejected": sum(c["rejected"] for c in calls),
        "batches": sum(c["batches"] for c in calls),
        "calls": len(calls),
        "seconds": round(seconds, 3),
        "events_per_s": round(events / busy, 1) if busy else 0.0,
        "batch_s_max": max((c["batch_s_max"] for c in calls), default=0.0),
        "lag": calls[-1]["lag"] if calls else {},
        "backend": backend,
        "last_id": calls[-1]["last_id"] if calls else "",
        "max_batch": min((c["max_batch"] for c in calls), default=0),
    }


def _publish(
    params: StreamParams, summary: dict[str, Any], calls: list[dict[str, Any]], backend: str
) -> None:
    """Metrics artifacts: one row per task call, and a markdown summary with a backend report."""
    rows = [
        {
            k: c[k]
            for k in (
                "events",
                "events_per_s",
                "batches",
                "batch_s_p50",
                "batch_s_max",
                "late",
                "skipped",
                "max_batch",
                "backend",
            )
        }
        | {"lag": str(c["lag"])}
        for c in calls
    ]
    lines = [
        f"## stream_stats on `{params.source}`",
        "",
        f"- events: {summary['events']:,} in {summary['seconds']:.1f} s "
        f"({summary['events_per_s']:,.0f} events/s while consuming), {summary['batches']} "
        f"micro-batches, longest {summary['batch_s_max']:.3f} s",
        f"- late events (past the watermark, counted per window): {summary['late']:,}; "
        f"rejected entries: {summary['rejected']:,}",
        f"- lag at the end: {summary['lag']}",
        f"- backend: {backend}",
    ]
    gpu = gpu_line(Budget.gpu()) if backend == "gpu" else None
    if gpu:
        lines.append(f"- GPU: {gpu}")
    comparison = backend_comparison(params.sink)
    if len(comparison) > 1:
        lines += ["", "| backend | events | aggregate s | events/s |", "|---|---|---|---|"]
        lines += [f"| {b} | {e:,} | {s:.2f} | {r:,.0f} |" for b, e, s, r in comparison]
    publish_artifact(
        "table",
        rows,
        key="stream-stats-calls",
        description="stream_stats: one row per micro-batch task call",
    )
    publish_artifact(
        "markdown",
        "\n".join(lines),
        key="stream-stats-metrics",
        description="stream_stats: throughput, lag, late events",
    )


def gpu_line(devices: list[GpuDevice]) -> str | None:
    """The first GPU NVML sees, in one line of the metrics report; None without one."""
    if not devices:
        return None
    d = devices[0]
    busy = "?" if d.utilization_pct is None else f"{d.utilization_pct:.0f}"
    return (
        f"{d.name}, utilisation {busy} %, "
        f"memory used {d.total_mb - d.free_mb:,.0f} of {d.total_mb:,.0f} MiB"
    )


def backend_comparison(sink: str) -> list[tuple[str, int, float, float]]:
    """(backend, events, seconds aggregating, events/s) per backend recorded in a sink."""
    import duckdb

    try:
        with duckdb.connect(sink, read_only=True) as db:
            rows = db.execute(
                "SELECT backend, sum(events), sum(seconds) FROM stream_batches "
                "GROUP BY backend ORDER BY backend"
            ).fetchall()
    except duckdb.Error:
        return []
    return [(b, int(e), float(s), float(e) / float(s) if s else 0.0) for b, e, s in rows]


def demo(workdir: pathlib.Path) -> str:
    """Generate a small fraud_synth dataset, stream it (embedded source), summarise."""
    from flows.stream_stats.sources.embedded import fraud_dataset

    workdir = pathlib.Path(workdir)
    dataset = fraud_dataset(workdir / "fraud", transactions=200_000, seed=7, files=4, days=2)
    sink = workdir / "stream_stats.duckdb"
    started = time.monotonic()
    summary = stream_stats(
        source=str(dataset),
        sink=str(sink),
        window="1min",
        watermark="2min",
        max_batch=65_536,
        max_duration="2min",
        backend="cpu",
    )
    windows = read_windows(sink)
    return (
        f"stream_stats: {summary['events']:,} events from {dataset.name} into "
        f"{len(windows):,} (window, key) rows in {time.monotonic() - started:.1f} s "
        f"({summary['events_per_s']:,.0f} events/s aggregating, {summary['batches']} "
        f"micro-batches, {summary['late']} late)"
    )


run_if_main(__name__, stream_stats, demo)
