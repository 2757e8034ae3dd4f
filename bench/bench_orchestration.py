"""Orchestration overhead of the pinned Prefect: tasks/s for mapped trivial tasks on SQLite
ephemeral, a SQLite server and a PostgreSQL server, and the time from
`prefect deployment run` to Running through a process worker.

    python -m bench.bench_orchestration [--scale N] [--runs R]

Each tasks/s subject is its own process (bench.common.measure: CPU and peak RSS of the client
tree); servers are started with deployments.production.server in fresh PREFECT_HOMEs; the
PostgreSQL database is created for the run and dropped afterwards. No ``from __future__``
import: trivial_flow is deployed from this module.
"""

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefect import flow, task

from bench.common import ROOT, measure, python, table, write_section
from deployments.ports import free_port

TASKS = 500
# Measured on prefect 3.9.1 by the author, for reference (tasks/s).
REFERENCE = {"SQLite ephemeral": 108, "SQLite server": 116, "PostgreSQL server": 147}
UUID_LINE = re.compile(r"UUID: ([0-9a-f-]{36})")


@task
def trivial(index: int) -> int:
    """Nothing worth measuring but the orchestration around it."""
    return index


@flow(name="bench-mapped")
def mapped(count: int) -> int:
    """``count`` trivial tasks through Task.map."""
    return sum(future.result() for future in trivial.map(range(count)))


@flow(name="bench-trivial")
def trivial_flow() -> int:
    """The smallest deployable flow: the latency to Running is all orchestration."""
    return 1


SUBJECT = """
import json, time
from bench.bench_orchestration import mapped
mapped(5)  # warm-up: ephemeral server start-up, flow registration, imports
started = time.perf_counter()
mapped({count})
print("RESULT", json.dumps({{"seconds": time.perf_counter() - started}}))
"""


def tasks_per_second(label: str, count: int, env: dict[str, str]) -> list[object]:
    """One tasks/s row: run the subject, read its timing line."""
    measured = measure(label, python(SUBJECT.format(count=count)), env=env, timeout_s=600)
    if measured.returncode != 0:
        return [label, "failed", "", REFERENCE.get(label, ""), "", ""]
    seconds = json.loads(measured.output.rsplit("RESULT", 1)[1].splitlines()[0])["seconds"]
    rate = count / seconds
    return [label, seconds, rate, REFERENCE[label], rate / REFERENCE[label], measured.peak_rss_mb]


def deployment_latency(settings, runs: int, workdir: Path) -> list[list[object]]:
    """Median seconds from invoking `prefect deployment run` to Pending and to Running."""
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.production import server

    document = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    document["deployments"] = [
        {
            "name": "latency",
            "entrypoint": "bench/bench_orchestration.py:trivial_flow",
            "work_pool": {"name": server.WORK_POOL},
        }
    ]
    prefect_file = workdir / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(document, sort_keys=False))
    with temporary_settings({PREFECT_API_URL: settings.api_url}):
        from deployments.setup import ensure_work_pool

        ensure_work_pool()
        server.deploy(settings, prefect_file=prefect_file)
        server.start_workers(settings, 1)
        to_cli, to_pending, to_running, to_done = [], [], [], []
        with get_client(sync_client=True) as client:
            for _ in range(runs):
                started = time.time()
                output = subprocess.run(
                    [server.PREFECT, "deployment", "run", "bench-trivial/latency"],
                    cwd=ROOT,
                    env=settings.client_env(),
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                to_cli.append(time.time() - started)
                run_id = UUID_LINE.search(output).group(1)
                deadline = time.monotonic() + 120
                while not (run := client.read_flow_run(run_id)).state.is_final():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"flow run {run_id} did not finish")
                    time.sleep(0.2)
                states = {
                    s.type.value: s.timestamp.timestamp()
                    for s in client.read_flow_run_states(run.id)
                }
                to_pending.append(states["PENDING"] - started)
                to_running.append(states["RUNNING"] - started)
                to_done.append(states[run.state.type.value] - started)
    median = statistics.median
    return [
        ["`prefect deployment run` returns", median(to_cli)],
        ["worker submits it (Pending)", median(to_pending)],
        ["flow-run process Running", median(to_running)],
        ["Completed", median(to_done)],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the task count")
    parser.add_argument("--runs", type=int, default=3, help="deployment runs to time")
    args = parser.parse_args(argv)
    from deployments.production import server
    from deployments.production.pg import PgSettings, drop_database

    count = int(TASKS * args.scale)
    scratch = Path(tempfile.mkdtemp(prefix="headroom-bench-orchestration-"))
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    name = f"headroom_bench_{secrets.token_hex(4)}"
    pg = PgSettings(database=name, user=name, password=os.environ.get("HEADROOM_PG_PASSWORD", ""))
    rows: list[list[object]] = []
    latency: list[list[object]] = []
    sqlite_server = server.ServerSettings(port=free_port(), state_dir=scratch / "sqlite", ui=False)
    pg_server = server.ServerSettings(port=free_port(), state_dir=scratch / "pg", ui=False)
    try:
        ephemeral_home = scratch / "ephemeral"
        rows.append(
            tasks_per_second("SQLite ephemeral", count, {"PREFECT_HOME": str(ephemeral_home)})
        )
        server.start_server(sqlite_server, None)
        rows.append(tasks_per_second("SQLite server", count, _client(sqlite_server)))
        server.stop(sqlite_server)
        server.start_server(pg_server, pg)
        rows.append(tasks_per_second("PostgreSQL server", count, _client(pg_server)))
        latency = deployment_latency(pg_server, args.runs, scratch)
    finally:
        server.stop(sqlite_server)
        server.stop(pg_server)
        drop_database(pg)
        shutil.rmtree(scratch, ignore_errors=True)
    markdown = "\n\n".join(
        [
            f"### Orchestration overhead (prefect 3.8.8): {count} mapped trivial tasks",
            table(
                ["backend", "seconds", "tasks/s", "ref. 3.9.1", "ratio", "client peak MiB"],
                rows,
            ),
            "Reference figures were measured on prefect 3.9.1 by the issue's author on another "
            "machine: a comparison, not a target. Client = the flow process tree (with the "
            "ephemeral server in the first row).",
            "### Deployment run to Running (PostgreSQL server, one process worker, "
            f"default 10 s polling; median of {args.runs})",
            table(["from invoking `prefect deployment run` to", "seconds"], latency),
        ]
    )
    write_section("orchestration", markdown)
    sys.stdout.write(markdown + "\n")
    return 0


def _client(settings) -> dict[str, str]:
    env = settings.client_env()
    return {k: env[k] for k in ("PREFECT_API_URL", "PREFECT_HOME")}


if __name__ == "__main__":
    sys.exit(main())
