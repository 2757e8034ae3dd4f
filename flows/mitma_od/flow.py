"""Ingest MITMA origin-destination trips into DuckDB: many days at once, flat memory.

Discover the daily files of a date range (RSS feed, URL pattern or local mirror; missing
days are gaps, not failures), download them to a raw cache, stage each day with DuckDB in a
budgeted task (tag ``mitma-od``: the memory admission, not a small pool, decides how many may run
at once; no more than one a core do, as a day is one DuckDB thread that never waits), then load
the staged days one transaction per day through the single writer (tag ``duckdb-writer``). A
bad file fails alone; the run names every failed file at the end.
"""

import time
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

from prefect import flow, get_run_logger, task

from flows.common.flow import publish_artifact, run_if_main
from flows.common.params import signature_from
from flows.mitma_od import bronze, cleanup, discover, download
from flows.mitma_od.bronze import MIN_REPLACE_SHARE
from flows.mitma_od.discover import DEFAULT_SOURCE
from flows.mitma_od.params import MitmaParams
from flows.mitma_od.schema import ZoneType
from headroom import Chunking
from headroom.errors import BadInput
from headroom.prefect import (
    FLOW_HOOKS,
    ChunkScale,
    MaxWorkers,
    Outcome,
    budgeted_task,
    map_bounded,
    raise_failures,
    retry_unless_terminal,
)
from headroom.storage import check_writable

download_day = budgeted_task(
    download.download_file,
    tag="mitma-download",
    oom_retries=0,
    retries=3,
    transient=(ConnectionError, TimeoutError),
    retry_delay_s=2.0,
    # Streaming a file holds one block at a time: no child process needed, but the task still
    # takes its share of the memory admission.
    isolate=False,
    name="download-mitma-day",
)
stage_day = budgeted_task(
    bronze.stage_day,
    tag="mitma-od",
    # Rows per Parquet row group: DuckDB's writer buffers about one group per thread.
    chunk=Chunking("rows_per_group", default=122_880, floor=8_192, ceiling=262_144),
    input_bytes=lambda kw: _file_size(kw["raw_path"]),
    name="stage-mitma-day",
    # A day is one DuckDB thread that never waits on I/O: no more days run at once than cores,
    # while the rest of the pool waits admitted (see headroom.prefect.cpu_slots).
    threads=1,
)
# One writer task loads every staged day of the run (a transaction per day) over one connection:
# the writer's slot is handed over once per run, not once per day.
load_days = budgeted_task(
    bronze.load_days, tag="duckdb-writer", oom_retries=2, name="load-mitma-days"
)


def _file_size(path: str) -> int | None:
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


@task(
    name="discover-mitma-files",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_terminal,
)
def discover_files(source: str, zone_type: str, days: list[date]) -> discover.Discovery:
    """The published daily files for ``days``, and the days without one."""
    return discover.discover(source, zone_type, days)


def _name_of(item: dict[str, Any]) -> str:
    return item.get("source_file") or Path(item.get("destination", "?")).name


class CacheDirs(NamedTuple):
    """Where a run keeps raw files, staged days, rejected rows and temporaries."""

    raw: Path
    staging: Path
    rejects: Path
    temp: Path


@flow(name="ingest-mitma-od", **FLOW_HOOKS)
@signature_from(MitmaParams)
def ingest_mitma_od(
    start_date: date | None = None,
    end_date: date | None = None,
    zone_type: ZoneType = "distritos",
    source: str = DEFAULT_SOURCE,
    database: str = "data/mitma/mitma.duckdb",
    cache_dir: str | None = None,
    raw_retention_days: int = 0,
    lookback_days: int = 7,
    missing_only: bool = False,
    max_workers: MaxWorkers = 15,
    chunk_scale: ChunkScale = 1.0,
    min_replace_share: float = MIN_REPLACE_SHARE,
) -> dict[str, Any]:
    """Load the MITMA daily OD files of a date range and zone type into bronze + silver."""
    params = MitmaParams.from_call(locals())
    started = time.monotonic()
    dirs = _prepare_cache(params)
    days, discovery = _discover(params)
    downloads, raw_paths = _download(params, discovery, dirs)
    stages = _stage(params, discovery, raw_paths, dirs)
    # One writer: days load in date order, one transaction each.
    staged = sorted((o.value for o in stages if o.ok), key=lambda v: v["day"])
    loads = _load(params, staged, dirs)
    loaded = [o.value for o in loads if o.ok]
    loaded_files = {v["source_file"] for v in loaded}
    cleaned = cleanup.cleanup_after_load(
        [v["staging"] for v in staged if v["source_file"] in loaded_files],
        [raw_paths[name] for name in loaded_files],
        str(dirs.raw),
        params.raw_retention_days,
    )
    summary = {
        "zone_type": params.zone_type,
        "days": len(days),
        "files": len(discovery.files),
        "gaps": [d.isoformat() for d in discovery.gaps],
        "loaded": [v["day"] for v in loaded],
        "rows": sum(v["rows"] for v in loaded),
        "rejected": sum(v["rejected"] for v in staged if v["source_file"] in loaded_files),
        "downloaded_bytes": sum(o.value["bytes"] for o in downloads if o.ok),
        "skipped_downloads": sum(1 for o in downloads if o.ok and o.value["skipped"]),
        "seconds": round(time.monotonic() - started, 2),
        **cleaned,
    }
    _publish_summary(params, discovery, downloads, stages, loads)
    get_run_logger().info(
        "%s: %d of %d files loaded, %s rows, %d gaps, %.1f s",
        params.zone_type,
        len(loaded),
        len(discovery.files),
        f"{summary['rows']:,}",
        len(discovery.gaps),
        summary["seconds"],
    )
    raise_failures(
        [o for o in [*downloads, *stages, *loads] if not o.ok], "MITMA daily files", _name_of
    )
    return summary


def _prepare_cache(params: MitmaParams) -> CacheDirs:
    """The run's cache directories, checked writable and rid of what killed runs left."""
    cache = params.cache_root()
    dirs = CacheDirs(cache / "raw", cache / "staging", cache / "rejects", cache / "tmp")
    # A full or read-only disk is the machine's fault: said once, before any file is read.
    check_writable(Path(params.database).resolve().parent, dirs.raw, dirs.staging, dirs.rejects)
    leftovers = cleanup.remove_stale_temporaries(*dirs)
    if leftovers:
        get_run_logger().info("removed %d temporary files of killed runs", len(leftovers))
    return dirs


def _discover(params: MitmaParams) -> tuple[list[date], discover.Discovery]:
    """The days to ingest and the files published for them; a day without one is a gap."""
    days = params.days()
    if params.missing_only:
        done = bronze.loaded_days(params.database, params.zone_type)
        days = [d for d in days if d not in done]
    discovery = (
        discover_files(params.source, params.zone_type, days) if days else discover.Discovery()
    )
    for gap in discovery.gaps:
        get_run_logger().warning("no %s file published for %s: gap", params.zone_type, gap)
    return days, discovery


def _download(
    params: MitmaParams, discovery: discover.Discovery, dirs: CacheDirs
) -> tuple[list[Outcome], dict[str, str]]:
    """Download what is remote (a local mirror is read in place); each file's local path by
    its name, for the files that are here."""
    remote = [f for f in discovery.files if not f.is_local]
    downloads = map_bounded(
        download_day,
        [
            {
                "url": f.location,
                "destination": str(dirs.raw / discover.daily_relpath(f.zone_type, f.day)),
            }
            for f in remote
        ],
        max_workers=params.max_workers,
        chunk_scale=None,
    )
    raw_paths = {f.name: f.location for f in discovery.files if f.is_local}
    for outcome in downloads:
        if outcome.ok:
            raw_paths[Path(outcome.item["destination"]).name] = outcome.value["path"]
    return downloads, raw_paths


def _stage(
    params: MitmaParams, discovery: discover.Discovery, raw_paths: dict[str, str], dirs: CacheDirs
) -> list[Outcome]:
    """Stage every day whose raw file is here: typed Parquet and a file of rejected rows."""
    return map_bounded(
        stage_day,
        [
            {
                "raw_path": raw_paths[f.name],
                "staging_path": str(dirs.staging / f"{f.name.removesuffix('.csv.gz')}.parquet"),
                "rejects_path": str(dirs.rejects / f"{f.name.removesuffix('.csv.gz')}.rejects.csv"),
                "day": f.day.isoformat(),
                "zone_type": f.zone_type,
                "source_file": f.name,
                "temp_root": str(dirs.temp),
            }
            for f in discovery.files
            if f.name in raw_paths
        ],
        max_workers=params.max_workers,
        chunk_scale=params.chunk_scale,
    )


def _load(params: MitmaParams, staged: list[dict[str, Any]], dirs: CacheDirs) -> list[Outcome]:
    """Load the staged days through the single writer; one outcome per day."""
    if not staged:
        return []
    [batch] = map_bounded(
        load_days,
        [
            {
                "database": params.database,
                "staged": staged,
                "temp_root": str(dirs.temp),
                "min_replace_share": params.min_replace_share,
            }
        ],
        max_workers=1,
        chunk_scale=None,
    )
    if not batch.ok:
        return [Outcome({"source_file": v["source_file"]}, error=batch.error) for v in staged]
    return [Outcome({"source_file": v["source_file"]}, v) for v in batch.value["loaded"]] + [
        Outcome({"source_file": f["source_file"]}, error=_load_error(f))
        for f in batch.value["failed"]
    ]


def _load_error(failure: dict[str, str]) -> Exception:
    """A day the writer could not load, as the error it met (bad input or DuckDB's own)."""
    if failure.get("kind", "BadInput") == "BadInput":
        return BadInput(failure["error"])
    return RuntimeError(f"{failure['kind']}: {failure['error']}")


def _publish_summary(
    params: MitmaParams,
    discovery: discover.Discovery,
    downloads: list[Outcome],
    stages: list[Outcome],
    loads: list[Outcome],
) -> None:
    """A table artifact: one row per day with its outcome, rows and rejects."""
    rows: dict[str, dict[str, Any]] = {
        d.isoformat(): {"day": d.isoformat(), "file": "", "status": "gap", "rows": 0}
        for d in discovery.gaps
    }
    for f in discovery.files:
        rows[f.day.isoformat()] = {"day": f.day.isoformat(), "file": f.name, "status": "found"}
    by_name = {r["file"]: r for r in rows.values() if r["file"]}
    for phase, outcomes in (("download", downloads), ("stage", stages), ("load", loads)):
        for outcome in outcomes:
            row = by_name.get(_name_of(outcome.item))
            if row is None:
                continue
            if outcome.ok:
                row["status"] = f"{phase}ed" if phase != "stage" else "staged"
                if phase == "stage":
                    row["rejected"] = outcome.value["rejected"]
                    row["rejects"] = outcome.value["rejects"] or ""
                if phase == "load":
                    row["status"], row["rows"] = "loaded", outcome.value["rows"]
            else:
                row["status"] = f"{phase} failed: {str(outcome.error).splitlines()[0][:200]}"
    publish_artifact(
        "table",
        [rows[k] for k in sorted(rows)],
        key=f"mitma-od-{params.zone_type.lower()}",
        description=f"MITMA {params.zone_type}: outcome per day",
    )


def demo(workdir: Path) -> str:
    """Serve three generated days over HTTP on 127.0.0.1, ingest them, report the figures."""
    import functools
    import http.server
    import threading
    from datetime import date as _date

    from flows.mitma_od import samples

    mirror = workdir / "site"
    files = samples.write_samples(
        mirror, _date(2023, 3, 1), 3, zone_types=["municipios"], rows_per_day=100_000, seed=5
    )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(mirror))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        samples.write_rss(mirror, base, files)
        started = time.monotonic()
        summary = ingest_mitma_od(
            start_date=_date(2023, 3, 1),
            end_date=_date(2023, 3, 4),
            zone_type="municipios",
            source=f"{base}/RSS.xml",
            database=str(workdir / "mitma.duckdb"),
            max_workers=15,
        )
        seconds = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    return (
        f"mitma-od: {len(summary['loaded'])} daily files over HTTP, {summary['rows']:,} rows "
        f"into {workdir / 'mitma.duckdb'}, {len(summary['gaps'])} gap day(s) reported, "
        f"{seconds:.1f} s"
    )


run_if_main(__name__, ingest_mitma_od, demo)
