"""Serve every deployment of prefect.yaml on a local Prefect server with its UI.

    make serve           # or: python -m deployments.serve [--only NAME ...] [--port 4200]
    python -m deployments.serve --stop     # what a killed serve left running

The zero-setup path, with the very deployments production gets: it starts ``prefect server
start`` on SQLite under PREFECT_HOME (default .prefect in the project) with the UI on
http://127.0.0.1:4200, runs setup (limits, work pool, blocks, zombie-run automation), deploys
prefect.yaml with ``prefect --no-prompt deploy`` (Prefect's own reader: parameters,
schedules with their active flag, concurrency limits, triggers, tags, descriptions) and
starts a process worker for the headroom-process pool. Ctrl-C or SIGTERM stops the worker,
then the server. A flow-run process killed by SIGKILL is marked Crashed by the worker, which
then calls the flow's on_crashed hook (a re-run with chunk_scale halved).

Clients of this server (the prefect CLI, scripts) need its address:

    export PREFECT_API_URL=http://127.0.0.1:4200/api
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from deployments.production.server import (
    ServerSettings,
    deploy,
    process_names,
    run_setup,
    running_pid,
    start_server,
    start_workers,
    stop,
)

log = logging.getLogger("deployments.serve")

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "prefect.yaml"


def load_deployment_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The deployments of prefect.yaml, YAML anchors resolved (for checks; deploying is left
    to ``prefect deploy``, so that nothing here reads the file differently)."""
    document = yaml.safe_load(path.read_text())
    return list(document.get("deployments") or [])


def serve_settings(port: int | None = None, state_dir: Path | None = None) -> ServerSettings:
    """Loopback server with the UI, its PID files under .headroom/serve, its database in
    PREFECT_HOME (the demo's, so the UI shows the demo's runs too)."""
    settings = ServerSettings.from_env()
    return dataclasses.replace(
        settings,
        host="127.0.0.1",
        port=port or int(os.environ.get("HEADROOM_SERVER_PORT", "4200")),
        state_dir=state_dir or ROOT / ".headroom" / "serve",
        home=Path(os.environ.get("PREFECT_HOME", ROOT / ".prefect")),
        ui=True,
    )


class _Stop(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt: no ``except Exception`` on the
    way may swallow it)."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def serve(settings: ServerSettings, names: list[str] | None = None) -> int:
    """Start server, setup, deployments and worker; wait; stop them all. The exit status."""
    running = [n for n in process_names(settings) if running_pid(settings, n) is not None]
    if running:
        log.error(
            "%s still run(s) from an earlier serve under %s: python -m deployments.serve --stop",
            ", ".join(running),
            settings.state_dir,
        )
        return 1
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        start_server(settings, None)
        run_setup(settings)
        deploy_log = settings.state_dir / "deploy.log"
        try:
            deploy(settings, names, output=deploy_log)
        except subprocess.CalledProcessError:
            log.error("prefect deploy failed:\n%s", deploy_log.read_text()[-3000:])
            return 1
        deployed = load_deployment_specs()
        log.info(
            "deployed %s", ", ".join(s["name"] for s in deployed if not names or s["name"] in names)
        )
        start_workers(settings, 1)
        ui = settings.api_url.removesuffix("/api")
        log.info(
            "serving: UI %s ; for the prefect CLI: export PREFECT_API_URL=%s ; "
            "server and worker logs under %s ; Ctrl-C stops",
            ui,
            settings.api_url,
            settings.state_dir,
        )
        while all(running_pid(settings, n) is not None for n in process_names(settings)):
            time.sleep(1)
        log.error("a process of serve exited: see the logs under %s", settings.state_dir)
        return 1
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        # A second SIGTERM (timeout(1) sends one to the child, then one to its group) must
        # not cut the stop short and leave the worker or the server behind.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.info("stopped: %s", ", ".join(stop(settings)) or "nothing was running")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="deploy only these deployment names")
    parser.add_argument("--port", type=int, help="API and UI port (default 4200)")
    parser.add_argument("--state-dir", type=Path, help="PID files and logs (.headroom/serve)")
    parser.add_argument("--stop", action="store_true", help="stop what a killed serve left")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = serve_settings(args.port, args.state_dir)
    if args.stop:
        log.info("stopped: %s", ", ".join(stop(settings)) or "nothing was running")
        return 0
    return serve(settings, args.only or None)


if __name__ == "__main__":
    sys.exit(main())
