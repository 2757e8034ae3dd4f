"""A local Prefect server made ready for a run, so that nothing a dead run left behind wedges it.

On the embedded default every script starts its own temporary server on the SQLite file in
PREFECT_HOME, and leases live in that server's memory: a run whose process was SIGKILLed (the
OOM killer), or whose exit stopped the server before its slots were given back, leaves them
held in the database with no lease left anywhere to expire. The next run would wait on them
for ever. So, before a run's first task, on a server of this machine only (a remote server
has its own lease expiry and other hosts' runs to respect):

- the limits headroom needs are created when missing (a script's first call on a fresh
  machine), logged once;
- Running runs whose process on this host is gone are marked Crashed (headroom.runs);
- when no other run is then live, slots held by no run are given back.

And the temporary server dies with the process that started it: a watchdog process kills it
when that process is gone, however it went. Slots this process let go are given back before
the temporary server stops at exit.

The temporary server itself is Prefect's, started by Prefect when a process first needs it,
with two changes (:func:`use_headroom_server`): its app answers again at once the requests
SQLite refused (headroom.server_app), and its task-run recorder and event persister write in
batches, so that the slot acquisitions of the tasks meet fewer other writers.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import threading
from typing import Any
from urllib.parse import urlparse

from headroom import leases

log = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_prepared: set[str] = set()
_prepared_lock = threading.Lock()
_watched: set[int] = set()
# Prefect's defaults write every task-run event in its own transaction; on SQLite each of them
# can refuse a slot acquisition landing at that moment. Overridden by the environment.
SERVER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "2",
}


def api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def is_local(url: str | None) -> bool:
    """Whether ``url`` is a server of this machine (None: the temporary, ephemeral one)."""
    return url is None or urlparse(url).hostname in LOCAL_HOSTS


def prepare(client: Any, this_run: str, planned: dict[str, int]) -> None:
    """Make the local server ready for a run (once per process and server): see the module."""
    url = api_url()
    if not is_local(url):
        return
    with _prepared_lock:
        if (url or "") in _prepared:
            return
        _prepared.add(url or "")
    if url is None:
        watch_temporary_server()
    create_missing_limits(client, planned)
    crash_dead_runs(client)
    give_back_stranded(client, list(planned), this_run)


def create_missing_limits(client: Any, planned: dict[str, int]) -> list[str]:
    """Create the planned limits that do not exist (never resizes an existing one)."""
    from prefect.exceptions import ObjectNotFound

    created = []
    for name, size in planned.items():
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.upsert_global_concurrency_limit_by_name(name, size)
            created.append(f"{name}={size}")
    if created:
        log.warning("created the missing concurrency limits %s", ", ".join(created))
    return created


def crash_dead_runs(client: Any) -> list[str]:
    """Mark Crashed the Running flow runs whose process, on this host, is gone (killed with
    its temporary server, nothing left to report it): otherwise they stay Running for ever
    and hold back the giving back of their slots. Returns their ids."""
    from prefect.states import Crashed

    from headroom import runs

    flow_runs = client.read_flow_runs(flow_run_filter=live_filter(), limit=200)
    dead = runs.gone(str(r.id) for r in flow_runs)
    for flow_run in flow_runs:
        detail = dead.get(str(flow_run.id))
        if detail is None:
            continue
        log.warning("flow run %s is Running but %s: marking it Crashed", flow_run.name, detail)
        client.set_flow_run_state(
            flow_run.id, Crashed(message=f"Crashed: {detail} (found by headroom)"), force=True
        )
        runs.forget_process(str(flow_run.id))
    return list(dead)


def give_back_stranded(client: Any, names: list[str], this_run: str | None = None) -> list[str]:
    """When no run but ``this_run`` is live, every slot still held is held by no run: give
    them back. With another run live nothing is touched (its slots are its own)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    others = [
        r
        for r in client.read_flow_runs(flow_run_filter=live_filter(), limit=5)
        if str(r.id) != this_run
    ]
    if others:
        return []
    freed = []
    for name in names:
        current = client.read_global_concurrency_limit_by_name(name)
        if current.active_slots:
            log.warning("%s: %d slots held by no run: giving them back", name, current.active_slots)
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(active_slots=0)
            )
            freed.append(name)
    return freed


def live_filter() -> Any:
    """Flow runs that are Running or Cancelling."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    return FlowRunFilter(
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.CANCELLING])
        )
    )


def watch_temporary_server() -> int | None:
    """Start a watchdog that kills this process's temporary Prefect server once this process
    is gone, and give back let-go slots before that server stops at exit. Returns the
    watchdog's pid (None when no temporary server runs here)."""
    from prefect.server.api.server import SubprocessASGIServer

    servers = [s for s in SubprocessASGIServer._instances.values() if s.server_process]
    if not servers:
        return None
    server_pid = servers[0].server_process.pid  # type: ignore[union-attr]
    if server_pid in _watched:
        return None
    _watched.add(server_pid)
    # atexit runs last-registered first: registered after the server's stop, this runs
    # before it, while the server can still take the slots back.
    atexit.unregister(leases.give_back_kept)
    atexit.register(leases.give_back_kept)
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "headroom.watchdog", str(os.getpid()), str(server_pid)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the script's group must not stop it first
    )
    return watchdog.pid


def use_headroom_server() -> bool:
    """On the embedded default (no API URL), have the temporary server Prefect starts for this
    process run headroom's app and settings (see the module). True when it will; False on a
    configured server, or when this process's temporary server already exists."""
    import os

    from prefect.settings import PREFECT_SERVER_EPHEMERAL_ENABLED

    if api_url() is not None or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return False
    if os.environ.get("HEADROOM_PREFECT_APP", "1") == "0":
        return False
    from prefect.server.api.server import SubprocessASGIServer

    if None in SubprocessASGIServer._instances:
        return isinstance(SubprocessASGIServer._instances[None], _temporary_server_class())
    _temporary_server_class()()  # registers itself as the one get_client() starts
    return True


_server_class: Any = None


def _temporary_server_class() -> Any:
    """Prefect's temporary server, started with headroom's app factory and settings."""
    global _server_class
    if _server_class is not None:
        return _server_class
    import os

    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class TemporaryServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            env = {
                **SERVER_SETTINGS,
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
            }
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--app-dir",
                    str(prefect.__module_path__.parent),
                    "--factory",
                    "headroom.server_app:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "error",
                    "--lifespan",
                    "on",
                ],
                env=env,
            )

    _server_class = TemporaryServer
    return TemporaryServer
