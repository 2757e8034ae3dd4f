"""Benchmark issue 21: does the embedded default keep the machine busy?

Each subject runs as its own process on the embedded default (a temporary Prefect server on
SQLite, started by that process): a flow run with no work, then every workload's demo (its
small size). For each: wall, CPU seconds of the whole tree (the temporary server included),
wall / (CPU / usable cores), and the slot acquisitions of the run (the engine's tag slots and
headroom's memory-mb slots; p50 / p95 over both). Then `make demo` as a user runs it.

Targets: wall <= 1.25 x CPU / cores per workload; slot acquisition p50 <= 50 ms, p95 <=
150 ms; a run with no work <= 5 CPU-s and <= 5 s wall; `make demo` <= 40 s.

Each figure is taken two ways in the same run, alternately: "prefect" = Prefect's own
temporary server with its default settings (HEADROOM_PREFECT_APP=0, as before issue 21) and
"headroom" = the temporary server headroom starts (headroom.server.temporary).

The issue's sizes (``--only fraud_synth_1gb fraud_synth_10gb iso_lmp_2000 mitma_od_2``)
read input generated once before the first run and kept in ``HEADROOM_WALL_CACHE``
(default /tmp/headroom-wall-bench): iso_lmp's day-ahead files of 2,000 nodes x 365 days x 3
ISOs (bench_iso_lmp's), mitma_od's 15 files x 2 M rows (bench_mitma_od's, budget 2 GB).

    .venv/bin/python -m bench.bench_wall [--only no_work fraud_synth ... fraud_synth_1gb]
        [--repeat 2]
        [--ways prefect headroom] [--no-demo] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import measure, table, write_section
from bench.wall_subject import DEMOS, LARGE
from headroom.budget import usable_cores

SUBJECTS = ["no_work", *DEMOS, *LARGE]  # the last ones at the sizes
CACHE = Path(os.environ.get("HEADROOM_WALL_CACHE", "/tmp/headroom-wall-bench"))
ISO_NODES, ISO_DAYS = 2000, 365
MITMA_DAYS, MITMA_ROWS = 15, 2_000_000
RATIO_TARGET = 1.25
P50_TARGET_S, P95_TARGET_S = 0.050, 0.150
FIXED_CPU_S, FIXED_WALL_S = 5.0, 5.0
DEMO_TARGET_S = 40.0


WAYS = {"prefect": "0", "headroom": "1"}  # HEADROOM_PREFECT_APP


def embedded_env(home: Path, way: str) -> dict[str, str | None]:
    """The embedded default in a fresh home: no API URL, SQLite under PREFECT_HOME."""
    return {
        "HEADROOM_PREFECT_APP": WAYS[way],
        "PREFECT_API_URL": None,
        "PREFECT_HOME": str(home / "prefect"),
        "HEADROOM_STATE_DIR": str(home / "state"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "HEADROOM_MEMORY_LIMIT": "3GiB",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# CPU-bound work on every usable core, without Prefect: its ratio is what the machine's other
# load alone does to wall / (CPU / cores) at that moment (1.0 on an idle machine).
REFERENCE = """
import sys
from multiprocessing import Pool
def spin(n):
    total = 0
    for i in range(n):
        total += i * i
    return total
with Pool(int(sys.argv[1])) as pool:
    pool.map(spin, [25_000_000] * int(sys.argv[1]))
"""


def reference_ratio(cores: int) -> float:
    m = measure("reference", [sys.executable, "-c", REFERENCE, str(cores)])
    return m.wall_s / (m.cpu_s / cores)


def prepare(subject: str) -> str:
    """The input of a subject at the issue's size, generated once into CACHE ('' if none)."""
    if subject.startswith("iso_lmp_2000"):
        from datetime import date, timedelta

        from bench.bench_iso_lmp import ISOS, generate

        raw = CACHE / f"iso-{ISO_NODES}-{ISO_DAYS}"
        manifest = raw / "manifest.json"
        if not manifest.exists():
            shutil.rmtree(raw, ignore_errors=True)
            rows = generate(raw, ISO_NODES, ISO_DAYS)
            first = date(2023, 1, 1)
            end = first + timedelta(days=ISO_DAYS - 1)
            meta = {"isos": ISOS, "start": str(first), "end": str(end), "rows": rows}
            manifest.write_text(json.dumps(meta))
        # The flow stages next to the raw files and skips what it staged already: each run
        # converts every file.
        shutil.rmtree(raw / "_staging", ignore_errors=True)
        return str(raw)
    if subject == "mitma_od_2":
        from bench.bench_mitma_od import generate as generate_od

        mirror = CACHE / "mitma-2"
        generate_od(mirror, MITMA_DAYS, MITMA_ROWS)  # cached by its own manifest
        return str(mirror)
    return ""


class Demand:
    """Samples, while a measured subject runs, how many of its tree's threads are runnable
    (state R: on a core or waiting for one). min(runnable, cores) / cores averaged over the
    run is the share of the machine the subject asked for; 1 / that share is the ratio it would
    reach alone, whatever other sessions load the machine with meanwhile."""

    def __init__(self, cores: int, interval_s: float = 0.1) -> None:
        import threading

        self.cores, self.interval_s = cores, interval_s
        self.samples: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Demand:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._done.wait(self.interval_s):
            running = 0
            for child in me.children(recursive=True):
                for task in Path(f"/proc/{child.pid}/task").glob("*/stat"):
                    try:
                        running += task.read_text().rsplit(")", 1)[1].split()[0] == "R"
                    except (OSError, IndexError):
                        continue  # the thread or process ended meanwhile
            self.samples.append(running)

    def alone_ratio(self) -> float:
        """wall / (CPU / cores) the subject would reach on a machine of its own."""
        if not self.samples:
            return float("nan")
        share = statistics.mean(min(n, self.cores) / self.cores for n in self.samples)
        return 1 / share if share else float("inf")


def run_subject(subject: str, home: Path, cores: int, way: str) -> dict:
    workdir = home / "work" / subject
    out = home / f"{subject}.json"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    env = embedded_env(home, way)
    if subject == "mitma_od_2":
        env["HEADROOM_MEMORY_LIMIT"] = "2GB"  # bench_mitma_od's budget
    argv = [sys.executable, "-m", "bench.wall_subject", subject, str(workdir), str(out)]
    data = prepare(subject)
    with Demand(cores) as demand:
        m = measure(subject, [*argv, data], env=env, timeout_s=1800)
    shutil.rmtree(workdir, ignore_errors=True)  # fraud_synth 10 GB: its output
    if m.returncode != 0:
        raise RuntimeError(f"{subject} failed ({m.returncode}): {m.output[-2000:]}")
    slots = json.loads(out.read_text())
    every = slots["tag_s"] + slots["memory_s"]
    return {
        "subject": subject,
        "way": way,
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
        "ratio": m.wall_s / (m.cpu_s / cores),
        "alone": demand.alone_ratio(),
        "runnable": {n: demand.samples.count(n) for n in sorted(set(demand.samples))},
        "peak_mb": m.peak_rss_mb,
        "slots": len(every),
        "p50_s": percentile(every, 0.5),
        "p95_s": percentile(every, 0.95),
        "tag_p50_s": percentile(slots["tag_s"], 0.5),
        "request_p50_s": percentile(slots["tag_request_s"], 0.5),
        "request_p95_s": percentile(slots["tag_request_s"], 0.95),
        "locked": len(slots["tag_locked_s"]),
        "memory_p50_s": percentile(slots["memory_s"], 0.5),
        "max_s": max(every, default=float("nan")),
    }


def time_make_demo(home: Path, way: str) -> tuple[str, float, float, str]:
    """`make demo` after install (the venv and bytecode exist): wall and tree CPU seconds."""
    before = load()
    env = {k: v for k, v in embedded_env(home, way).items() if k != "HEADROOM_MEMORY_LIMIT"}
    shutil.rmtree(home / "prefect", ignore_errors=True)
    m = measure("make demo", ["make", "-s", "demo"], env=env, timeout_s=1800)
    if m.returncode != 0:
        raise RuntimeError("make demo failed")
    return way, m.wall_s, m.cpu_s, before


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} / {five:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=SUBJECTS[:-1], choices=SUBJECTS)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--ways", nargs="*", default=list(WAYS), choices=list(WAYS))
    args = parser.parse_args()
    cores = usable_cores()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-wall-") as scratch:
        home = Path(scratch)
        # Not measured: the first server on a new PREFECT_HOME creates its database (Prefect's
        # migrations, 12-13 CPU-s here), once per home; a user's home keeps it.
        run_subject("no_work", home, cores, args.ways[0])
        for subject in args.only:
            prepare(subject)
            for _ in range(args.repeat):
                for way in args.ways:
                    before = load()
                    reference = reference_ratio(cores)
                    r = run_subject(subject, home, cores, way)
                    r["load"] = before
                    r["reference"] = reference
                    rows.append(r)
                    print(json.dumps(r), flush=True)
        demo = []
        for _ in range(0 if args.no_demo else args.repeat):
            for way in args.ways:
                demo.append(time_make_demo(home, way))
                print(json.dumps({"make_demo": demo[-1]}), flush=True)
    if args.no_write:
        return
    large = set(args.only) <= set(LARGE)  # the sizes alone: their own section
    write_section("wall-large" if large else "wall", report(rows, demo, cores, large))


def report(
    rows: list[dict], demo: list[tuple[str, float, float, str]], cores: int, large: bool = False
) -> str:
    body = [
        [
            r["subject"],
            r["way"],
            r["wall_s"],
            r["cpu_s"],
            r["ratio"],
            r["reference"],
            r["ratio"] / r["reference"],
            r["alone"],
            r["slots"],
            f"{1000 * r['p50_s']:.0f}",
            f"{1000 * r['p95_s']:.0f}",
            f"{1000 * r['max_s']:.0f}",
            f"{1000 * r['request_p50_s']:.0f} / {1000 * r['request_p95_s']:.0f}",
            r["locked"],
            r["load"],
        ]
        for r in rows
    ]
    intro = (
        "Columns as in the table above; the issue's sizes, fraud_synth 1 GB / 10 GB (2 "
        "workers), iso_lmp 2,000 nodes x 365 days x 3 ISOs, mitma_od 15 files x 2 M rows "
        "(budget 2 GB); headroom's server only. Alone = the ratio the subject would reach on "
        "a machine of its own: 1 / the mean over the run of min(its runnable threads, cores) "
        "/ cores, sampled every 0.1 s (nan: not sampled). Other sessions loaded the cores "
        "(load column), so alone and ratio / reference say more than the ratio."
        if large
        else "Each subject in its own process with its own temporary Prefect server on "
        "SQLite, two ways alternately: prefect = Prefect's own temporary server and settings "
        "(HEADROOM_PREFECT_APP=0, as before issue 21), headroom = the server headroom starts "
        "(headroom.server.temporary). CPU = user+sys of the whole tree (server included); "
        "ratio = wall / (CPU / "
        f"{cores} usable cores), target <= {RATIO_TARGET}. Slots = the run's acquisitions (the "
        "engine's tag slots and headroom's memory-mb slots), target p50 <= 50 ms, p95 <= "
        "150 ms (the whole acquisition, waits for a slot another task holds included); tag "
        "requests = each request the engine sent for a tag slot and its answer, 423s = those "
        "refused because the limit was full. The machine is shared: reference = the same "
        "ratio for CPU-bound work on every core measured just before (1.0 when idle), and "
        "ratio / reference is the subject's own share. Alone = the ratio the subject would "
        "reach on a machine of its own: 1 / the mean over the run of min(its runnable "
        "threads, cores) / cores, sampled every 0.1 s. Load = 1 / 5-minute load average "
        "before the run."
    )
    lines = [
        "### At the issue's sizes" if large else "## Wall time on the embedded default (issue 21)",
        "",
        intro,
        "",
        table(
            [
                "subject",
                "server",
                "wall s",
                "CPU s",
                "ratio",
                "reference",
                "ratio / reference",
                "alone",
                "slots",
                "p50 ms",
                "p95 ms",
                "max ms",
                "tag requests p50 / p95 ms",
                "423s",
                "load",
            ],
            body,
        ),
    ]
    lines.append("")
    lines += _summary_lines(rows, demo)
    return "\n".join(lines)


def _summary_lines(rows: list[dict], demo: list[tuple[str, float, float, str]]) -> list[str]:
    """Per way: the fixed cost, the slot acquisitions and `make demo` against their targets."""
    lines = []
    for way in WAYS:
        no_work = [r for r in rows if r["subject"] == "no_work" and r["way"] == way]
        if no_work:
            wall = statistics.median(r["wall_s"] for r in no_work)
            cpu = statistics.median(r["cpu_s"] for r in no_work)
            lines.append(
                f"- {way}: fixed cost (no work, median of {len(no_work)}): {wall:.1f} s wall "
                f"(target <= {FIXED_WALL_S:.0f}), {cpu:.1f} CPU-s (target <= {FIXED_CPU_S:.0f})"
            )
        slots = [r for r in rows if r["way"] == way and r["subject"] != "no_work"]
        if slots:
            lines.append(
                f"- {way}: slot acquisitions, median over runs of p50 / p95: "
                f"{1000 * statistics.median(r['p50_s'] for r in slots):.0f} / "
                f"{1000 * statistics.median(r['p95_s'] for r in slots):.0f} ms"
            )
        made = [d for d in demo if d[0] == way]
        if made:
            lines.append(
                f"- {way}: `make demo` after install: "
                + ", ".join(f"{w:.1f} s wall / {c:.1f} CPU-s (load {ld})" for _, w, c, ld in made)
                + f" (target <= {DEMO_TARGET_S:.0f} s)"
            )
    return lines


if __name__ == "__main__":
    main()
