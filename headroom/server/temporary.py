"""The temporary Prefect server of a process on the embedded default (no API URL): Prefect's,
with four changes.

- It starts as soon as headroom.prefect is imported, not when the process first asks the API
  for something, so that it boots while the process imports the rest of its flow.
- This process listens on its port before the server starts (headroom.server.serve takes the
  socket over), and sets PREFECT_API_URL to it: Prefect's client connects at once and gets its
  answer when the server is up, and this process never imports Prefect's server code (3.2-3.3
  CPU-s of imports on a 2-core AMD EPYC, 2026-12-03) to start or find a temporary server.
- Its app answers again at once the requests SQLite refused (headroom.server.app).
- Its task-run recorder and event persister write in batches, so that slot acquisitions meet
  fewer other writers (Prefect's defaults write every task-run event in its own transaction).

It is stopped at this process's exit, and by a watchdog if this process is killed
(headroom.prefect.local_server). Processes this one starts inherit PREFECT_API_URL and use the
same server. ``HEADROOM_PREFECT_APP=0`` leaves Prefect's own. None starts early in a pytest
session (it imports flow modules to collect tests, and its fixtures choose the server) or in a
multiprocessing child (a Dask worker imports flow modules to run tasks it may be told the
server of); there Prefect starts its own when it is needed, as before.
"""

from __future__ import annotations

import atexit
import os
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
BACKLOG = 128  # connections the kernel queues while the server boots
STOP_S = 5.0
_server: tuple[subprocess.Popen[Any], str] | None = None  # (process, API URL)


def start_early() -> bool:
    """On the embedded default, start this process's temporary server now (see the module).
    True when it did; False on a configured server, when one already exists, when
    ``HEADROOM_PREFECT_APP=0``, or in a pytest session or multiprocessing child."""
    global _server
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
            return False  # Prefect started its own already
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(BACKLOG)
        url = f"http://127.0.0.1:{listening.getsockname()[1]}/api"
        process = _launch(listening)
    _server = (process, url)
    atexit.register(stop)
    os.environ["PREFECT_API_URL"] = url  # this process's settings and its children's
    # No "View at" links: the temporary server serves no UI and stops with this process (as
    # Prefect's own temporary server, which has no UI URL).
    os.environ.setdefault("PREFECT_UI_URL", "")
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()
    return True


def running() -> tuple[int, str] | None:
    """(pid, API URL) of the temporary server this process started, while it runs."""
    if _server is None or _server[0].poll() is not None:
        return None
    return _server[0].pid, _server[1]


def stop() -> None:
    """Stop this process's temporary server (at exit): SIGTERM, then SIGKILL after STOP_S."""
    if _server is None or _server[0].poll() is not None:
        return
    process = _server[0]
    process.terminate()
    try:
        process.wait(STOP_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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


def _launch(listening: socket.socket) -> subprocess.Popen[Any]:
    """Start the server on the listening socket, with headroom's app."""
    fd = listening.fileno()
    return subprocess.Popen(
        [sys.executable, "-m", "headroom.server.serve", str(fd), "headroom.server.app:create_app"],
        env=_server_env(),
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
    )
