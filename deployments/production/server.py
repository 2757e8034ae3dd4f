"""Start, check and stop a production-like Prefect installation on this machine, by PID file.

    python -m deployments.production.server start [--workers N]   # or: scripts/prod start
    python -m deployments.production.server status
    python -m deployments.production.server deploy                # prefect --no-prompt deploy --all
    python -m deployments.production.server stop

``start`` creates the PostgreSQL role and database (deployments.production.pg), starts
``prefect server start`` on ``postgresql+asyncpg`` (URL built from the environment, handed to
the server in its environment only), waits for /api/health, runs headroom's setup (limits,
memory-mb:<host>, work pool, blocks) and the zombie-run automation, then starts process
workers for the ``headroom-process`` pool. Every process runs in its own process group and
its PID (with its start time, so a recycled PID is never killed) is kept under
$HEADROOM_PROD_DIR (default .headroom/production).

The server binds 127.0.0.1 unless HEADROOM_SERVER_HOST says otherwise, and refuses any other
address unless PREFECT_SERVER_API_AUTH_STRING is set (clients then send it as
PREFECT_API_AUTH_STRING). Settings, all from the environment:

    HEADROOM_SERVER_HOST (127.0.0.1)  HEADROOM_SERVER_PORT (4200)  HEADROOM_WORKERS (1)
    HEADROOM_PROD_DIR (.headroom/production)  PREFECT_FLOWS_HEARTBEAT_FREQUENCY (30, workers)
    HEADROOM_ZOMBIE_AFTER_S (90)  HEADROOM_PG_* (see deployments.production.pg)
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deployments.production.pg import PgSettings, create_database
from headroom.prefect.runs import process_start, same_process

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
WORK_POOL = "headroom-process"
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


class UnsafeBind(ValueError):
    """The server would listen beyond this machine without API authentication."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything, so treat it as exposed


def check_bind(host: str, auth_string: str | None) -> None:
    """Refuse to listen on a non-loopback address without Prefect's server auth string."""
    if not is_loopback(host) and not auth_string:
        raise UnsafeBind(
            f"HEADROOM_SERVER_HOST={host!r} is reachable from other machines: set "
            "PREFECT_SERVER_API_AUTH_STRING (user:password) first; clients send it as "
            "PREFECT_API_AUTH_STRING"
        )


@dataclass(frozen=True)
class ServerSettings:
    """Where the server listens, where its state and PID files live, and its auth string."""

    host: str = "127.0.0.1"
    port: int = 4200
    state_dir: Path = ROOT / ".headroom" / "production"
    auth_string: str | None = field(default=None, repr=False)
    heartbeat_s: int = 30
    zombie_after_s: float = 90.0
    ui: bool = True
    extra_env: dict[str, str] = field(default_factory=dict, repr=False)
    home: Path | None = None  # PREFECT_HOME; default <state_dir>/prefect-home

    def __post_init__(self) -> None:
        check_bind(self.host, self.auth_string)
        if self.heartbeat_s < 30:
            raise ValueError("PREFECT_FLOWS_HEARTBEAT_FREQUENCY must be at least 30 (Prefect)")
        if self.zombie_after_s <= self.heartbeat_s:
            raise ValueError(
                f"HEADROOM_ZOMBIE_AFTER_S={self.zombie_after_s:g} must exceed the heartbeat "
                f"period ({self.heartbeat_s} s), or every healthy run would be marked Crashed"
            )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServerSettings:
        """The settings from the environment."""
        env = os.environ if environ is None else environ
        return cls(
            host=env.get("HEADROOM_SERVER_HOST", "127.0.0.1"),
            port=int(env.get("HEADROOM_SERVER_PORT", "4200")),
            state_dir=Path(env.get("HEADROOM_PROD_DIR", ROOT / ".headroom" / "production")),
            auth_string=env.get("PREFECT_SERVER_API_AUTH_STRING") or None,
            heartbeat_s=int(env.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")),
            zombie_after_s=float(env.get("HEADROOM_ZOMBIE_AFTER_S", "90")),
        )

    @property
    def api_url(self) -> str:
        """The API URL clients use (a wildcard bind is reached through loopback here)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/api"

    @property
    def prefect_home(self) -> Path:
        return self.home or self.state_dir / "prefect-home"

    def client_env(self) -> dict[str, str]:
        """Environment of every client of this server: CLI, setup, workers, flow runs."""
        env = {
            **os.environ,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(self.heartbeat_s),
            # prefect.yaml's pull step: flow runs start in this checkout on every host.
            "HEADROOM_ROOT": str(ROOT),
            **self.extra_env,
        }
        env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)  # clients never see it
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        if self.auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        return env

    def server_env(self, pg: PgSettings | None) -> dict[str, str]:
        """Environment of the server process: the database URL exists only here.

        ``pg=None`` keeps Prefect's SQLite file under PREFECT_HOME (benchmarks, a laptop).
        """
        env = self.client_env()
        env.pop("PREFECT_API_URL")
        url = (
            pg.connection_url()
            if pg is not None
            else f"sqlite+aiosqlite:///{self.prefect_home / 'prefect.db'}"
        )
        env.update(
            PREFECT_SERVER_DATABASE_CONNECTION_URL=url,
            PREFECT_SERVER_API_HOST=self.host,
            PREFECT_SERVER_API_PORT=str(self.port),
            PREFECT_SERVER_UI_ENABLED="true" if self.ui else "false",
            # Let the UI talk to the API at the address it was reached by.
            PREFECT_UI_API_URL=env.get("PREFECT_UI_API_URL", "/api"),
        )
        if self.auth_string:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string
        return env


# ---------------------------------------------------------------------------------------------
# PID files


def _pid_file(settings: ServerSettings, name: str) -> Path:
    return settings.state_dir / f"{name}.pid"


def _launch(settings: ServerSettings, name: str, argv: list[str], env: dict[str, str]) -> int:
    """Start ``argv`` in its own process group, logging to <state>/<name>.log; record its PID."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if (pid := running_pid(settings, name)) is not None:
        raise RuntimeError(f"{name} already runs as PID {pid}; stop it first")
    with open(settings.state_dir / f"{name}.log", "ab") as output:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() takes its children too
        )
    started = process_start(process.pid)
    _pid_file(settings, name).write_text(f"{process.pid} {started}\n")
    return process.pid


def running_pid(settings: ServerSettings, name: str) -> int | None:
    """The PID recorded for ``name`` if that very process (same start time) still runs."""
    try:
        pid_text, started_text = _pid_file(settings, name).read_text().split()
        pid, started = int(pid_text), float(started_text)
    except (FileNotFoundError, ValueError):
        return None
    return pid if same_process(pid, started) else None  # else recycled, or gone


def _stop_one(settings: ServerSettings, name: str, grace_s: float = 10.0) -> bool:
    """SIGTERM the process group of ``name``, SIGKILL it after ``grace_s``; True if it ran."""
    pid = running_pid(settings, name)
    _pid_file(settings, name).unlink(missing_ok=True)
    if pid is None:
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and process_start(pid) is not None:
        time.sleep(0.2)
    _signal_group(pid, signal.SIGKILL)  # whatever is left of the group, children included
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def process_names(settings: ServerSettings) -> list[str]:
    """Every process recorded under the state directory (server first)."""
    names = sorted(p.stem for p in settings.state_dir.glob("*.pid"))
    return sorted(names, key=lambda n: n != "server")


# ---------------------------------------------------------------------------------------------
# Server, workers, deploy


def auth_headers(auth_string: str | None) -> dict[str, str]:
    """The Authorization header Prefect's clients send for PREFECT_API_AUTH_STRING."""
    if not auth_string:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


def healthy(settings: ServerSettings, timeout_s: float = 3.0) -> bool:
    """Whether the API answers /health (open without auth, as Prefect allows for probes)."""
    import httpx

    try:
        return httpx.get(f"{settings.api_url}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def start_server(
    settings: ServerSettings, pg: PgSettings | None, *, timeout_s: float = 180.0
) -> int:
    """Create the database if needed, start the server, wait until it is healthy."""
    if pg is not None:
        create_database(pg)
    pid = _launch(
        settings,
        "server",
        [PREFECT, "server", "start", "--host", settings.host, "--port", str(settings.port)],
        settings.server_env(pg),
    )
    deadline = time.monotonic() + timeout_s
    while not healthy(settings):
        if process_start(pid) is None:
            tail = (settings.state_dir / "server.log").read_text()[-3000:]
            raise RuntimeError(f"the Prefect server exited during start-up:\n{tail}")
        if time.monotonic() > deadline:
            _stop_one(settings, "server")
            raise TimeoutError(f"the Prefect server was not healthy after {timeout_s:.0f} s")
        time.sleep(0.5)
    database = pg.database if pg is not None else "SQLite"
    log.info("server PID %d healthy at %s (database %s)", pid, settings.api_url, database)
    return pid


def run_setup(settings: ServerSettings) -> None:
    """headroom's setup and the zombie-run automation, against this server."""
    for module, args in (
        ("deployments.setup", []),
        ("deployments.production.automations", ["--within", str(settings.zombie_after_s)]),
    ):
        subprocess.run(
            [sys.executable, "-m", module, *args], cwd=ROOT, env=settings.client_env(), check=True
        )


def start_workers(settings: ServerSettings, count: int = 1, pool: str = WORK_POOL) -> list[int]:
    """Start ``count`` process workers for ``pool``, named after this host."""
    host = socket.gethostname()
    pids = []
    for index in range(count):
        name = f"worker-{index}"
        argv = [PREFECT, "worker", "start", "--pool", pool, "--type", "process"]
        argv += ["--name", f"{pool}-{host}-{index}"]
        pids.append(_launch(settings, name, argv, settings.client_env()))
    log.info("%d worker(s) for %s: PIDs %s", count, pool, ", ".join(map(str, pids)))
    return pids


def deploy(
    settings: ServerSettings,
    names: list[str] | None = None,
    prefect_file: Path | None = None,
    output: Path | None = None,
) -> None:
    """``prefect --no-prompt deploy --all`` (or ``--name`` each of ``names``) from prefect.yaml.

    The pull step (deployments/steps.py) reads HEADROOM_ROOT when each run starts, from the
    environment of the worker that runs it, so every host runs its own checkout.
    """
    argv = [PREFECT, "--no-prompt", "deploy"]
    argv += [arg for name in names for arg in ("--name", name)] if names else ["--all"]
    if prefect_file is not None:
        argv += ["--prefect-file", str(prefect_file)]
    env = settings.client_env()
    if output is None:
        subprocess.run(argv, cwd=ROOT, env=env, check=True)
        return
    with open(output, "ab") as log_file:  # prefect deploy's tables and hints, kept aside
        subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=log_file, stderr=log_file)


def status(settings: ServerSettings) -> dict[str, object]:
    """Each recorded process (PID or None) and whether the API is healthy."""
    report: dict[str, object] = {n: running_pid(settings, n) for n in process_names(settings)}
    report["api"] = settings.api_url
    report["healthy"] = healthy(settings)
    return report


def stop(settings: ServerSettings) -> list[str]:
    """Stop workers first (their runs are then marked Crashed by them), the server last."""
    names = process_names(settings)
    stopped = [n for n in sorted(names, key=lambda n: n == "server") if _stop_one(settings, n)]
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "status", "stop", "deploy"])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("HEADROOM_WORKERS", 1)))
    parser.add_argument("--name", action="append", help="deploy only these deployments")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = ServerSettings.from_env()
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.action == "start":
        pg = PgSettings.from_env()
        if not pg.password and os.environ.get("HEADROOM_PG_TRUST") != "1":
            log.error(
                "HEADROOM_PG_PASSWORD is empty: the role %r would have no password. Set it, or "
                "set HEADROOM_PG_TRUST=1 where PostgreSQL trusts local connections by design",
                pg.user,
            )
            return 2
        start_server(settings, pg)
        try:
            run_setup(settings)
            start_workers(settings, args.workers)
        except BaseException:
            stop(settings)
            raise
        log.info("export PREFECT_API_URL=%s  # then: scripts/prod deploy", settings.api_url)
    elif args.action == "status":
        report = status(settings)
        for key, value in report.items():
            log.info("%s: %s", key, "not running" if value is None else value)
        return 0 if report["healthy"] else 1
    elif args.action == "deploy":
        deploy(settings, args.name)
    else:
        stopped = stop(settings)
        log.info("stopped: %s", ", ".join(stopped) or "nothing was running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
