"""The demo: every workload on generated sample data, under a fixed memory budget, on the
embedded defaults (ephemeral Prefect on SQLite inside the project, local files, no services).

    make demo          # or: python -m deployments.demo [--only NAME ...] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from flows import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent


def _embedded_defaults() -> None:
    os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("HEADROOM_STATE_DIR", str(ROOT / ".headroom"))
    # Runs log at INFO to the API, so the UI shows each run's logs; the terminal shows only
    # warnings from Prefect and the demo's own summary lines.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(ROOT / "demo-output"))
    parser.add_argument("--only", nargs="*", help="run only these workloads")
    args = parser.parse_args(argv)
    _embedded_defaults()
    # The runs' INFO records reach the root logger's handlers by propagation whatever the root
    # level: the terminal handler itself lets only warnings through.
    terminal = logging.StreamHandler()
    terminal.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[terminal])
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from deployments.setup import apply_limits
    from headroom.prefect import current_budget

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    budget = current_budget()
    print(f"headroom demo under a budget of {budget.describe()}")
    apply_limits()
    started = time.monotonic()
    failures = 0
    for name, module_name in ((w.name, w.module) for w in WORKLOADS):
        if args.only and name not in args.only:
            continue
        module = importlib.import_module(module_name)
        step = time.monotonic()
        try:
            summary = module.demo(workdir / name)
        except Exception as exc:  # one workload failing must not hide the others
            failures += 1
            print(f"FAILED {name}: {type(exc).__name__}: {exc}")
            continue
        print(f"ok {name} ({time.monotonic() - step:.1f} s): {summary}")
    print(
        f"demo finished in {time.monotonic() - started:.1f} s; outputs under {workdir}; "
        f"memory reports under {os.environ['HEADROOM_STATE_DIR']}/reports"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
