"""MITMA OD benchmark: 15 daily files into DuckDB at once, the seed's pandas way against ours.

    python -m bench.bench_mitma_od                 # 15 files x 1 M rows under a 2 GB budget
    python -m bench.bench_mitma_od --scale 2       # 15 files x 2 M rows (the issue's size)

Subjects, each measured as its own process tree (peak RSS, CPU seconds of the tree):
- pandas, pool 15: the DAG that died; 15 processes each ``pd.read_csv`` a whole file, then
  insert it into DuckDB (no DuckDB memory limit).
- pandas, pool 3: the manual fix (pool 3, ``memory_limit='2GB'``, ``threads=2``).
- bare DuckDB: one process, ``read_csv`` of each file into a table, default settings.
- ours: ``ingest_mitma_od`` over the local mirror under HEADROOM_MEMORY_LIMIT=2GB, max_workers
  15, on its own Prefect server (a separate process outside the measured tree, as a real
  deployment's server would be).

Sample files are cached under the scratch directory between runs (same seed, same bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

from bench.common import ROOT, Measurement, measure, table, write_section

SCRATCH = Path(os.environ.get("HEADROOM_BENCH_SCRATCH", "/tmp/headroom-mitma-bench"))
START = date(2023, 3, 1)
ZONE_TYPE = "distritos"
BUDGET = "2GB"
SEED = 21
# Over this the pandas pool-15 subject is stopped: the machine is shared, and the seed's DAG
# would have been SIGKILLed long before.
PANDAS_ABORT_MB = 9_000


# ---------------------------------------------------------------------------------------------
# Subjects (run as `python -m bench.bench_mitma_od <subject> ...`)


def _files(mirror: Path, days: int) -> list[str]:
    from flows.mitma_od.discover import daily_relpath

    return [str(mirror / daily_relpath(ZONE_TYPE, START + timedelta(days=i))) for i in range(days)]


def _pandas_read(path: str):
    import pandas as pd

    # What the seed's task did: the whole file into one DataFrame, types guessed.
    return pd.read_csv(path, sep="|", compression="gzip", na_values=["NA"], keep_default_na=False)


def _pandas_task(args: tuple[str, str, bool]) -> int:
    import fcntl

    import duckdb

    path, database, limited = args
    frame = _pandas_read(path)
    with open(database + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one DuckDB writer at a time, as Airflow's hook did
        config = {"memory_limit": "2GB", "threads": 2} if limited else {}
        con = duckdb.connect(database, config=config)
        con.register("frame", frame)
        con.execute("CREATE TABLE IF NOT EXISTS bronze AS SELECT * FROM frame LIMIT 0")
        con.execute("INSERT INTO bronze SELECT * FROM frame")
        con.close()
    return len(frame)


def run_pandas(mirror: Path, days: int, database: str, pool: int) -> int:
    import multiprocessing
    import threading

    import psutil

    limited = pool < 15
    stop = threading.Event()

    def watch() -> None:
        me = psutil.Process()
        while not stop.wait(0.1):
            total = sum(_rss(p) for p in [me, *me.children(recursive=True)])
            if total / (1 << 20) > PANDAS_ABORT_MB:
                print(f"ABORTED above {PANDAS_ABORT_MB} MiB", flush=True)
                for child in me.children(recursive=True):
                    child.kill()
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()
    with multiprocessing.get_context("fork").Pool(pool) as workers:
        rows = sum(
            workers.map(
                _pandas_task, [(f, database, limited) for f in _files(mirror, days)], chunksize=1
            )
        )
    stop.set()
    return rows


def _rss(process) -> int:
    try:
        return process.memory_info().rss
    except Exception:
        return 0


def run_duckdb(mirror: Path, days: int, database: str) -> int:
    import duckdb

    con = duckdb.connect(database)
    for index, path in enumerate(_files(mirror, days)):
        verb = "CREATE TABLE bronze AS" if index == 0 else "INSERT INTO bronze"
        con.execute(f"{verb} SELECT * FROM read_csv($path, delim='|', header=true)", {"path": path})
    rows = con.execute("SELECT count(*) FROM bronze").fetchone()[0]
    con.close()
    return rows


def run_ours(mirror: Path, days: int, database: str) -> int:
    from flows.mitma_od.flow import ingest_mitma_od

    summary = ingest_mitma_od(
        start_date=START,
        end_date=START + timedelta(days=days - 1),
        zone_type=ZONE_TYPE,
        source=str(mirror),
        database=database,
        cache_dir=str(Path(database).parent / "cache"),
        max_workers=15,
    )
    return summary["rows"]


# ---------------------------------------------------------------------------------------------
# Harness


def _generate_one(args: tuple[str, int, int]) -> dict:
    from flows.mitma_od.samples import write_day

    root, offset, rows = args
    sample = write_day(root, ZONE_TYPE, START + timedelta(days=offset), rows, SEED)
    return {"rows": sample.rows, "viajes": str(sample.viajes)}


def generate(mirror: Path, days: int, rows: int) -> dict:
    """The sample files (cached: regenerated only when days or rows change)."""
    import multiprocessing

    manifest = mirror / "manifest.json"
    wanted = {"days": days, "rows": rows, "seed": SEED}
    if manifest.exists() and json.loads(manifest.read_text()).get("params") == wanted:
        return json.loads(manifest.read_text())
    shutil.rmtree(mirror, ignore_errors=True)
    mirror.mkdir(parents=True)
    started = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(2) as workers:
        truth = workers.map(_generate_one, [(str(mirror), i, rows) for i in range(days)])
    document = {
        "params": wanted,
        "rows": sum(t["rows"] for t in truth),
        "bytes": sum(Path(f).stat().st_size for f in _files(mirror, days)),
        "seconds": round(time.monotonic() - started, 1),
    }
    manifest.write_text(json.dumps(document))
    return document


@contextmanager
def prefect_server(home: Path):
    """A Prefect server on 127.0.0.1 in its own process; yields its API URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the Prefect server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _subject(name: str, mirror: Path, days: int, database: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.bench_mitma_od",
        name,
        "--mirror",
        str(mirror),
        "--days",
        str(days),
        "--database",
        str(database),
        *extra,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "subject", nargs="?", default="all", choices=["all", "pandas", "duckdb", "ours"]
    )
    parser.add_argument("--scale", type=float, default=1.0, help="rows per file = 1 M x scale")
    parser.add_argument("--days", type=int, default=15)
    parser.add_argument("--mirror", type=Path, default=SCRATCH / "site")
    parser.add_argument("--database", type=Path)
    parser.add_argument("--pool", type=int, default=15)
    parser.add_argument("--skip-pandas-15", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args(argv)

    if args.subject != "all":
        runner = {
            "pandas": lambda: run_pandas(args.mirror, args.days, str(args.database), args.pool),
            "duckdb": lambda: run_duckdb(args.mirror, args.days, str(args.database)),
            "ours": lambda: run_ours(args.mirror, args.days, str(args.database)),
        }
        print(f"ROWS {runner[args.subject]()}", flush=True)
        return 0

    rows_per_file = int(1_000_000 * args.scale)
    data = generate(args.mirror, args.days, rows_per_file)
    print(
        f"data: {args.days} files, {data['rows']:,} rows, {data['bytes'] / 1e6:,.0f} MB gz "
        f"(generated in {data['seconds']} s)",
        flush=True,
    )
    results = _run_subjects(args.mirror, args.days, data["rows"], args.skip_pandas_15)
    section = report(results, data, args.days, rows_per_file)
    print(section)
    if not args.no_write:
        write_section("mitma_od", section)
    shutil.rmtree(SCRATCH / "runs", ignore_errors=True)
    if not args.keep:
        shutil.rmtree(args.mirror, ignore_errors=True)
    return 0


Result = tuple[Measurement, int | None, str]


def _record(
    label: str, argv: list[str], expected_rows: int, env: dict[str, str] | None = None
) -> Result:
    """Measure one subject in a fresh runs directory: (measurement, rows loaded, note)."""
    runs = SCRATCH / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    measurement = measure(label, argv, env=env, timeout_s=900)
    rows = next(
        (
            int(line.split()[1])
            for line in measurement.output.splitlines()
            if line.startswith("ROWS ")
        ),
        None,
    )
    note = ""
    if "ABORTED" in measurement.output:
        note = f"stopped above {PANDAS_ABORT_MB:,} MiB (the seed's DAG was SIGKILLed)"
    elif measurement.returncode != 0:
        note = f"failed (exit {measurement.returncode})"
    elif rows != expected_rows:
        note = f"loaded {rows} rows, expected {expected_rows}"
    print(
        f"{label}: wall {measurement.wall_s:.1f} s, cpu {measurement.cpu_s:.1f} s, "
        f"peak {measurement.peak_rss_mb:,.0f} MiB {note}",
        flush=True,
    )
    return measurement, rows, note


def _run_subjects(
    mirror: Path, days: int, expected_rows: int, skip_pandas_15: bool
) -> list[Result]:
    """Measure every subject, one after another, each loading into a fresh database."""
    database = SCRATCH / "runs" / "od.duckdb"
    results: list[Result] = []
    if not skip_pandas_15:
        results.append(
            _record(
                "pandas read_csv, pool 15",
                _subject("pandas", mirror, days, database, "--pool", "15"),
                expected_rows,
            )
        )
    results.append(
        _record(
            "pandas read_csv, pool 3 (memory_limit 2GB, threads 2)",
            _subject("pandas", mirror, days, database, "--pool", "3"),
            expected_rows,
        )
    )
    results.append(
        _record(
            "bare DuckDB read_csv, one process",
            _subject("duckdb", mirror, days, database),
            expected_rows,
        )
    )
    results.append(_record_ours(mirror, days, database, expected_rows))
    return results


def _record_ours(mirror: Path, days: int, database: Path, expected_rows: int) -> Result:
    """Measure the flow against its own Prefect server, outside the measured tree."""
    # A fresh server database each run: a run killed with its server (Ctrl-C here) leaves its
    # flow run Running and its slots held in the old one, which would stall this run.
    shutil.rmtree(SCRATCH / "prefect", ignore_errors=True)
    with prefect_server(SCRATCH / "prefect") as api_url:
        env = {
            "PREFECT_API_URL": api_url,
            "HEADROOM_MEMORY_LIMIT": BUDGET,
            "HEADROOM_STATE_DIR": str(SCRATCH / "state"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        subprocess.run(
            [sys.executable, "-c", "from deployments.setup import apply_limits; apply_limits()"],
            env={**os.environ, **env},
            cwd=ROOT,
            check=True,
        )
        shutil.rmtree(SCRATCH / "state", ignore_errors=True)
        return _record(
            f"ours: ingest_mitma_od, max_workers 15, budget {BUDGET}",
            _subject("ours", mirror, days, database),
            expected_rows,
            env=env,
        )


def report(results: list[Result], data: dict, days: int, rows_per_file: int) -> str:
    """The BENCHMARKS.md section."""
    from headroom import parse_size

    budget_mb = parse_size(BUDGET) / (1 << 20)
    bare = next(m for m, _, _ in results if m.label.startswith("bare DuckDB"))
    bare_rate = bare.per_core(data["rows"])
    rows = []
    for measurement, _loaded, note in results:
        rate = measurement.per_core(data["rows"]) if not note else float("nan")
        rows.append(
            [
                measurement.label,
                f"{measurement.wall_s:.1f}",
                f"{measurement.cpu_s:.1f}",
                f"{measurement.peak_rss_mb:,.0f}",
                f"{rate:,.0f}" if rate == rate else "-",
                f"{rate / bare_rate:.2f}" if rate == rate else "-",
                note or "ok",
            ]
        )
    ours = results[-1][0]
    ours_rate = ours.per_core(data["rows"])
    peak_met = ours.peak_rss_mb <= budget_mb and not results[-1][2]
    rate_met = ours_rate >= 0.9 * bare_rate
    targets = [
        [
            "peak RSS of the whole tree <= budget",
            f"{ours.peak_rss_mb:,.0f} MiB",
            f"{budget_mb:,.0f} MiB ({BUDGET})",
            "met" if peak_met else "NOT met",
        ],
        [
            "rows/s per core >= 0.9x bare DuckDB",
            f"{ours_rate / bare_rate:.2f}x",
            ">= 0.90x",
            "met" if rate_met else "NOT met",
        ],
    ]
    scaled = (
        "\n\nScaled down from the issue's 2 M rows per file: at 1 M rows the pandas pool-15 "
        "subject already peaks above 5 GB on this shared machine (2 cores), and a run at 2 M "
        "rows takes well over 4 minutes; `--scale 2` runs the full size."
        if rows_per_file < 2_000_000
        else ""
    )
    return f"""## MITMA OD ingestion (issue 5)

{days} daily `distritos` files of {rows_per_file:,} rows (gzip CSV in the published format,
{data["rows"]:,} rows, {data["bytes"] / 1e6:,.0f} MB compressed), all dates at once. Per core =
rows / CPU seconds of the whole process tree; ratio against bare DuckDB. Peak = summed RSS of
the tree (for ours: flow process + guarded children; the Prefect server runs apart).

{table(["subject", "wall s", "CPU s", "peak MiB", "rows/CPU-s", "x bare", "note"], rows)}

{table(["target", "measured", "goal", ""], targets)}

Ours reads each CSV once (typed, rejects kept by the same scan, published domains as ENUMs,
one DuckDB thread per staging task; the pool of 15 is admitted, at most one day a core runs,
since a day never waits on I/O and more at once only cost CPU) into lz4 Parquet staging, then
the single writer copies Parquet into bronze (published domains kept as ENUMs) in a transaction
per day after the last day is staged; it also pays Prefect's task orchestration (a few CPU-s
of the flow process, a third of it importing Prefect) and a child per task, forked from a fork
server that imported the DuckDB module once (about 14 ms of CPU a call instead of 145 ms).
Earlier runs the same day, before the fork server held DuckDB (each child imported it):
0.91x, 0.84x (ours 90.3 CPU-s, bare 75.7; cause not found) and 0.91x.
Bare DuckDB parses once, types guessed, with no rejects, no provenance columns and no per-day
replace.{scaled}"""


if __name__ == "__main__":
    sys.exit(main())
