"""The demo: every workload on generated sample data, under a fixed memory budget, on the
embedded defaults (ephemeral Prefect on SQLite inside the project, local files, no services).

Each workload generates its own data, so they run side by side, as many at once as there are
usable cores (``--lanes``): one workload alone leaves a core idle while its flow process
orchestrates, and the per-host memory limit admits their tasks whatever runs beside them.
The temporary Prefect server is one for the whole demo.

    make demo          # or: python -m deployments.demo [--only NAME ...] [--workdir DIR]
                       #     [--lanes N]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flows import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent
# The longest first, so that the lanes end together.
LONGEST_FIRST = ("ml_pipeline", "iso_lmp", "oom_drill", "mitma_od", "stream_stats", "fraud_synth")


def _embedded_defaults() -> None:
    os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("HEADROOM_STATE_DIR", str(ROOT / ".headroom"))
    # Runs log at INFO to the API, so the UI shows each run's logs; the terminal shows only
    # warnings from Prefect and the demo's own summary lines.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def run_side_by_side(names: list[str], run: Callable[[str], str], lanes: int) -> int:
    """``run(name)`` for each name, ``lanes`` at once; prints each outcome as it ends.
    Returns how many failed: one workload failing must not hide the others. An interrupt
    (Ctrl-C, or one raised by a workload) starts no further workload and is raised again."""
    interrupted = threading.Event()

    def one(name: str) -> bool:
        if interrupted.is_set():
            return False
        step = time.monotonic()
        try:
            summary = run(name)
        except Exception as exc:
            print(f"FAILED {name}: {type(exc).__name__}: {exc}", flush=True)
            return False
        except BaseException:
            interrupted.set()
            raise
        print(f"ok {name} ({time.monotonic() - step:.1f} s): {summary}", flush=True)
        return True

    with ThreadPoolExecutor(max_workers=max(1, lanes), thread_name_prefix="demo") as pool:
        futures = [pool.submit(one, name) for name in names]
        try:
            return sum(not future.result() for future in futures)
        except BaseException:
            interrupted.set()
            raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(ROOT / "demo-output"))
    parser.add_argument("--only", nargs="*", help="run only these workloads")
    parser.add_argument("--lanes", type=int, help="workloads at once (default: usable cores)")
    args = parser.parse_args(argv)
    _embedded_defaults()
    # The runs' INFO records reach the root logger's handlers by propagation whatever the root
    # level: the terminal handler itself lets only warnings through.
    terminal = logging.StreamHandler()
    terminal.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[terminal])
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from deployments.setup import apply_limits
    from headroom.budget import usable_cores
    from headroom.prefect import current_budget

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    budget = current_budget()
    print(f"headroom demo under a budget of {budget.describe()}")
    apply_limits()
    started = time.monotonic()
    modules = {w.name: w.module for w in WORKLOADS}
    # Imported first, so that each workload's time is its run alone.
    names = sorted(
        (name for name in modules if not args.only or name in args.only),
        key=lambda name: LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(modules),
    )
    for name in names:
        importlib.import_module(modules[name])
    failures = run_side_by_side(
        names,
        lambda name: importlib.import_module(modules[name]).demo(workdir / name),
        args.lanes or usable_cores(),
    )
    print(
        f"demo finished in {time.monotonic() - started:.1f} s; outputs under {workdir}; "
        f"memory reports under {os.environ['HEADROOM_STATE_DIR']}/reports"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
