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
from bench.wall_subject import DEMOS
from headroom.budget import usable_cores

SUBJECTS = ["no_work", *DEMOS, "fraud_synth_1gb"]  # the last at the size
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


def run_subject(subject: str, home: Path, cores: int, way: str) -> dict:
    workdir = home / "work" / subject
    out = home / f"{subject}.json"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    m = measure(
        subject,
        [sys.executable, "-m", "bench.wall_subject", subject, str(workdir), str(out)],
        env=embedded_env(home, way),
    )
    if m.returncode != 0:
        raise RuntimeError(f"{subject} failed ({m.returncode})")
    slots = json.loads(out.read_text())
    every = slots["tag_s"] + slots["memory_s"]
    return {
        "subject": subject,
        "way": way,
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
        "ratio": m.wall_s / (m.cpu_s / cores),
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
        for subject in args.only:
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
    write_section("wall", report(rows, demo, cores))


def report(rows: list[dict], demo: list[tuple[str, float, float, str]], cores: int) -> str:
    body = [
        [
            r["subject"],
            r["way"],
            r["wall_s"],
            r["cpu_s"],
            r["ratio"],
            r["reference"],
            r["ratio"] / r["reference"],
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
    lines = [
        "## Wall time on the embedded default (issue 21)",
        "",
        "Each subject in its own process with its own temporary Prefect server on "
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
        "ratio / reference is the subject's own share. Load = 1 / 5-minute load average "
        "before the run.",
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
    return "\n".join(lines)


if __name__ == "__main__":
    main()
