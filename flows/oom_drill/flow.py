"""OOM drill: a synthetic guarded job that overshoots its cap, is retried smaller, and is
right-sized from history on the next run. Shows the mechanism every workload uses."""

import time
from pathlib import Path

from prefect import flow, get_run_logger

from flows.common.flow import run_if_main
from flows.common.params import signature_from
from flows.oom_drill import body as oom_drill_body
from flows.oom_drill.params import OomDrillParams
from headroom import Chunking, History
from headroom.prefect import (
    FLOW_HOOKS,
    ChunkScale,
    MaxWorkers,
    budgeted_task,
    map_bounded,
    raise_failures,
)

checksum_part = budgeted_task(
    oom_drill_body.checksum_rows,
    tag="fraud-gen",
    # A chunk holds rows_per_chunk rows of 1 KiB: the default chunk is meant to be more than
    # fraud-gen's cap in deployments/limits.toml, so the first attempt runs out of memory.
    chunk=Chunking("rows_per_chunk", default=600_000, floor=2_000),
    input_bytes=lambda kw: kw["rows"] * kw.get("bytes_per_row", 1024),
    name="checksum-part",
)


@flow(name="oom-drill", **FLOW_HOOKS)
@signature_from(OomDrillParams)
def oom_drill(
    parts: int = 2,
    rows: int = 600_000,
    max_workers: MaxWorkers = 2,
    chunk_scale: ChunkScale = 1.0,
) -> list[dict]:
    """Checksum ``parts`` parts of ``rows`` rows each under the fraud-gen cap."""
    params = OomDrillParams.from_call(locals())
    outcomes = map_bounded(
        checksum_part,
        [{"part": part, "rows": params.rows} for part in range(params.parts)],
        max_workers=max_workers,
        chunk_scale=chunk_scale,
    )
    raise_failures(outcomes, "drill parts", lambda item: f"part {item['part']}")
    values = [o.value for o in outcomes]
    get_run_logger().info("checksums: %s", ", ".join(v["sha256"] for v in values))
    return values


def demo(workdir: Path) -> str:
    """Two runs: the first learns (OOM, retry smaller), the second starts right-sized."""
    History().forget("checksum-part")  # start unlearned, so the first run shows the retry
    started = time.monotonic()
    first = oom_drill(parts=2, rows=600_000)
    second = oom_drill(parts=2, rows=600_000)
    same = [v["sha256"] for v in first] == [v["sha256"] for v in second]
    return (
        f"oom-drill: run 1 chunk {first[0]['rows_per_chunk']:,} rows after OOM retry, run 2 "
        f"started at {second[0]['rows_per_chunk']:,} from history; checksums equal: {same}; "
        f"{time.monotonic() - started:.1f} s"
    )


run_if_main(__name__, oom_drill, demo)
