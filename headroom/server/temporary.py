"""The temporary Prefect server of a process on the embedded default (no API URL): Prefect's,
with three changes.

- It starts as soon as headroom.prefect is imported, not when the process first asks the API
  for something, so that it boots while the process imports the rest of its flow.
- Its app answers again at once the requests SQLite refused (headroom.server.app).
- Its task-run recorder and event persister write in batches, so that slot acquisitions meet
  fewer other writers (Prefect's defaults write every task-run event in its own transaction).

Prefect still owns it: its ``get_client()`` finds it registered as the temporary server,
waits until it answers, and stops it at exit; if the settings changed since the early start
(a test harness's own database), the early one is stopped and a new one started.
``HEADROOM_PREFECT_APP=0`` leaves Prefect's own. None starts early in a pytest session (it
imports flow modules to collect tests, and its fixtures choose the server) or in a
multiprocessing child (a Dask worker imports flow modules to run tasks it may be told the
server of); there Prefect starts its own when it is needed, as before.
"""

from __future__ import annotations

import atexit
import os
import random
import socket
import subprocess
import sys
from typing import Any

SERVER_SETTINGS = {  # the environment overrides each
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "2",
}
PORTS = range(8000, 9000)  # Prefect's range for its temporary servers
_server_class: Any = None


def start_early() -> bool:
    """On the embedded default, start this process's temporary server now (see the module).
    True when it did; False on a configured server, when one already exists, when
    ``HEADROOM_PREFECT_APP=0``, or in a pytest session or multiprocessing child."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return False
    if os.environ.get("HEADROOM_PREFECT_APP", "1") == "0":
        return False
    import multiprocessing

    if "pytest" in sys.modules or multiprocessing.parent_process() is not None:
        return False
    if "prefect.server.api.server" in sys.modules:
        from prefect.server.api.server import SubprocessASGIServer

        if None in SubprocessASGIServer._instances:
            return False  # started already (by this module or by Prefect)
    port = _free_port()
    process, env = _launch(port)  # boots while this process imports the server module below
    server = _temporary_server_class()()
    server.port = port
    server.early = (process, env)
    server.server_process = process  # stopped at exit even if nothing here asks for it
    atexit.register(server.stop)
    return True


def _free_port() -> int:
    ports = list(PORTS)
    random.shuffle(ports)
    for port in ports[:50]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port for the temporary Prefect server in {PORTS}")


def _server_env() -> dict[str, str]:
    from prefect.settings import get_current_settings

    return {
        **SERVER_SETTINGS,
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }


def _launch(port: int) -> tuple[subprocess.Popen[Any], dict[str, str]]:
    """Start uvicorn as Prefect does for its temporary server, with headroom's app."""
    import prefect

    env = _server_env()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(prefect.__module_path__.parent),
            "--factory",
            "headroom.server.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
        env=env,
    )
    return process, env


def _temporary_server_class() -> Any:
    """Prefect's SubprocessASGIServer, whose first start takes over the early process."""
    global _server_class
    if _server_class is not None:
        return _server_class
    from prefect.server.api.server import SubprocessASGIServer

    class TemporaryServer(SubprocessASGIServer):
        early: tuple[subprocess.Popen[Any], dict[str, str]] | None = None

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            early, self.early = self.early, None
            if early is not None:
                process, env = early
                if process.poll() is None and env == _server_env():
                    return process
                process.terminate()  # its settings are no longer this process's
                process.wait()
            return _launch(self.port)[0]  # type: ignore[arg-type]  # start() has set it

    _server_class = TemporaryServer
    return TemporaryServer
