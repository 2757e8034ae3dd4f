"""Convert the seven ISOs' raw LMP files into one Parquet dataset, in flat memory.

Optionally download the raw files of the range first (public endpoints, or a mirror), then
convert them in budgeted tasks (tag ``iso-convert``: each runs in a guarded child under its
cap, retried with smaller chunks after an out-of-memory) and publish each (iso, market,
month) partition atomically. A bad file fails alone; the run names every failed file.
"""

import os
import time
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common.flow import publish_artifact, run_if_main
from flows.common.params import bad_parameter, signature_from
from flows.iso_lmp import dataset, fetch
from flows.iso_lmp.params import IsoLmpParams
from headroom import Chunking
from headroom.prefect import (
    FLOW_HOOKS,
    ChunkScale,
    ItemFailures,
    MaxWorkers,
    budgeted_task,
    map_bounded,
    raise_output_fault,
)
from headroom.storage import check_writable

FILES_PER_TASK = 400
"""Raw files one convert task parses in turn (about a year of daily files): one child."""
PJM_SECRET_BLOCK = "pjm-api-key"

CHUNK = Chunking("rows_per_chunk", default=262_144, floor=4_096, bytes_per_row=600.0)
convert_task = budgeted_task(
    dataset.convert_files,
    tag="iso-convert",
    chunk=CHUNK,
    input_bytes=lambda kw: sum(_size(f) for f in kw["files"]),
    name="convert-iso-files",
)
publish_task = budgeted_task(
    dataset.publish_partitions,
    tag="iso-convert",
    chunk=CHUNK,
    name="publish-iso-partitions",
)


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _pjm_api_key() -> str | None:
    """PJM's key from the Secret block, else $PJM_API_KEY; never a task parameter."""
    try:
        from prefect.blocks.system import Secret

        return Secret.load(PJM_SECRET_BLOCK).get()
    except Exception:
        return os.environ.get("PJM_API_KEY")


@task(name="fetch-iso-files", retries=2, retry_delay_seconds=5)
def fetch_task(
    iso: str, markets: list[str], start: str, end: str, raw: str, source: str | None
) -> dict[str, Any]:
    """Download one ISO's missing raw files of the range."""
    api_key = _pjm_api_key() if iso == "PJM" and not source else None
    return fetch.fetch_range(iso, markets, start, end, raw, source=source, api_key=api_key)


@flow(name="convert-iso-lmp", **FLOW_HOOKS)
@signature_from(IsoLmpParams)
def convert_iso_lmp(
    iso: str | list[str] = "all",
    start: date | None = None,
    end: date | None = None,
    markets: list[str] | None = None,
    raw: str = "data/iso_lmp/raw",
    out: str = "data/iso_lmp/dataset",
    fetch: bool = False,
    source: str | None = None,
    max_workers: MaxWorkers = 2,
    chunk_scale: ChunkScale = 1.0,
    min_replace_share: float = dataset.MIN_REPLACE_SHARE,
) -> dict[str, Any]:
    """Convert (and optionally first download) the ISO LMP files of ``start``..``end``."""
    params = IsoLmpParams.from_call(locals())
    started = time.monotonic()
    staging = str(dataset.staging_root_for(params.raw))
    # A full or read-only disk is the machine's fault: said once, before any file is read.
    check_writable(staging, params.out)
    failures = _fetch_missing(params) if params.fetch else []
    files = dataset.discover(Path(params.raw), params.iso, params.markets, params.start, params.end)
    if not files and not params.fetch:
        raise bad_parameter(
            "raw",
            f"no raw files of {', '.join(params.iso)} for {params.start}..{params.end} "
            f"under {params.raw}",
        )
    converts = map_bounded(
        convert_task,
        _convert_items(files, staging, params),
        max_workers=params.max_workers,
        chunk_scale=params.chunk_scale,
    )
    converted, partitions, pending = _converted(converts, failures)
    publishes = map_bounded(
        publish_task,
        _publish_items(pending, staging, params),
        max_workers=params.max_workers,
        chunk_scale=params.chunk_scale,
    )
    for outcome in publishes:
        if outcome.ok:
            partitions += outcome.value
        else:
            failures.append((f"{outcome.item['iso']} partitions", str(outcome.error)))
    # A partition refused (fewer rows than it has) keeps its published rows and fails the run.
    failures += [(p["partition"], p["error"]) for p in partitions if "error" in p]
    partitions = [p for p in partitions if "error" not in p]
    summary = _summary(params, files, converted, partitions, failures, started)
    publish_artifact(
        "table", partitions[:500], key="iso-lmp-partitions", description="published partitions"
    )
    raise_output_fault([*converts, *publishes])  # one fault of the output, reported once
    if failures:
        raise ItemFailures("ISO raw files or partitions", failures)
    return summary


def _fetch_missing(params: IsoLmpParams) -> list[tuple[str, str]]:
    """Download each ISO's missing raw files; the downloads that failed, by name."""
    logger = get_run_logger()
    failures: list[tuple[str, str]] = []
    for i in params.iso:
        state = fetch_task(
            i,
            [m.value for m in params.markets_of(i)],
            params.start.isoformat(),
            params.end.isoformat(),
            params.raw,
            params.source,
            return_state=True,
        )
        report = state.result(raise_on_failure=False)
        if isinstance(report, BaseException):
            if params.source:
                raise report  # the mirror does not answer: no ISO can be fetched
            failures.append((f"{i} downloads", str(report)))  # one ISO's endpoint is down
            continue
        failures += [(f, "download failed") for f in report["failed"]]
        for name in report["missing"]:
            logger.warning("%s: not published (yet): %s", report["iso"], name)
    return failures


def _convert_items(
    files: list[dataset.RawFile], staging: str, params: IsoLmpParams
) -> list[dict[str, Any]]:
    """The convert tasks' keyword arguments: one task per ISO converts its files and
    publishes what they touch (one child start each). A backfill bigger than
    FILES_PER_TASK is split, and its partitions published by the second map."""
    by_iso: dict[str, list[str]] = defaultdict(list)
    for raw_file in files:
        by_iso[raw_file.iso].append(str(raw_file.path))
    items = []
    for iso_id, paths in by_iso.items():
        single = len(paths) <= FILES_PER_TASK
        for first in range(0, len(paths), FILES_PER_TASK):
            items.append(
                {
                    "iso": iso_id,
                    "files": paths[first : first + FILES_PER_TASK],
                    "staging": staging,
                    "out": params.out if single else None,
                    "min_replace_share": params.min_replace_share,
                }
            )
    return items


def _converted(
    converts: list[Any], failures: list[tuple[str, str]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, set[tuple[str, str]]]]:
    """(files converted, partitions published, the (market, month) partitions per ISO still
    to publish) of the convert tasks; each failed file is added to ``failures``."""
    pending: dict[str, set[tuple[str, str]]] = defaultdict(set)
    converted: list[dict[str, Any]] = []
    partitions: list[dict[str, Any]] = []
    for outcome in converts:
        if not outcome.ok:
            failures += [(Path(f).name, str(outcome.error)) for f in outcome.item["files"]]
            continue
        partitions += outcome.value["partitions"]
        for result in outcome.value["files"]:
            if "error" in result:
                failures.append((Path(result["file"]).name, result["error"]))
                continue
            converted.append(result)
            if outcome.item["out"] is None:
                pending[outcome.value["iso"]] |= {(result["market"], m) for m in result["months"]}
    return converted, partitions, pending


def _publish_items(
    pending: dict[str, set[tuple[str, str]]], staging: str, params: IsoLmpParams
) -> list[dict[str, Any]]:
    """The publish tasks' keyword arguments: one per ISO with partitions left to publish."""
    return [
        {
            "iso": i,
            "partitions": sorted(p),
            "staging": staging,
            "out": params.out,
            "min_replace_share": params.min_replace_share,
        }
        for i, p in sorted(pending.items())
    ]


def _summary(
    params: IsoLmpParams,
    files: list[dataset.RawFile],
    converted: list[dict[str, Any]],
    partitions: list[dict[str, Any]],
    failures: list[tuple[str, str]],
    started: float,
) -> dict[str, Any]:
    """The run's counts, logged and returned."""
    summary = {
        "isos": params.iso,
        "files": len(files),
        "converted": sum(1 for r in converted if not r["skipped"]),
        "unchanged": sum(1 for r in converted if r["skipped"]),
        "failed": len(failures),
        "rows_staged": sum(r["rows"] for r in converted),
        "partitions": len(partitions),
        "rows_published": sum(p["rows"] for p in partitions),
        "seconds": round(time.monotonic() - started, 2),
    }
    get_run_logger().info(
        "%d raw files (%d converted, %d unchanged, %d failed) -> %d partitions, %s rows, %.1f s",
        summary["files"],
        summary["converted"],
        summary["unchanged"],
        summary["failed"],
        summary["partitions"],
        f"{summary['rows_published']:,}",
        summary["seconds"],
    )
    return summary


def demo(workdir: Path) -> str:
    """Write sample files of all seven ISOs (DST days included), convert them, report."""
    from flows.iso_lmp import samples

    raw = workdir / "raw"
    written = samples.write_samples(raw, nodes=50)
    started = time.monotonic()
    summary = convert_iso_lmp(
        iso="all",
        start=min(samples.SAMPLE_DAYS),
        end=max(samples.SAMPLE_DAYS),
        raw=str(raw),
        out=str(workdir / "dataset"),
    )
    seconds = time.monotonic() - started
    return (
        f"iso-lmp: {len(written)} raw files of 7 ISOs -> {summary['partitions']} partitions, "
        f"{summary['rows_published']:,} rows in {workdir / 'dataset'}, {seconds:.1f} s"
    )


run_if_main(__name__, convert_iso_lmp, demo)
