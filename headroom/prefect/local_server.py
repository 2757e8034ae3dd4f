"""A local Prefect server made ready for a run, so that nothing a dead run left behind wedges it.

On the embedded default every script starts its own temporary server on the SQLite file in
PREFECT_HOME, and leases live in that server's memory: a run whose process was SIGKILLed (the
OOM killer), or whose exit stopped the server before its slots were given back, leaves them
held in the database with no lease left anywhere to expire. The next run would wait on them
for ever. So, before a run's first task, on a server of this machine only (a remote server
has its own lease expiry and other hosts' runs to respect):

- the limits headroom needs are created when missing (a script's first call on a fresh
  machine), logged once;
- Running runs whose process on this host is gone are marked Crashed (headroom.prefect.runs);
- when no other run is then live, slots held by no run are given back.

And the temporary server dies with the process that started it: a watchdog process kills it
when that process is gone, however it went. Slots this process let go are given back before
the temporary server stops at exit.

The temporary server itself is started early and with headroom's app: headroom.server.temporary.
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

from headroom.prefect import leases
from headroom.prefect.runs import live_filter

log = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_prepared: set[str] = set()
_prepared_lock = threading.Lock()
_watched: set[int] = set()


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
    if url is None or url == temporary_url():
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

    from headroom.prefect import runs

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


def temporary_url() -> str | None:
    """The API URL of the temporary server this process started early, while it runs."""
    from headroom.server import temporary

    running = temporary.running()
    return running[1] if running else None


def _temporary_server_pid() -> int | None:
    """This process's temporary server: headroom's early one, or Prefect's own."""
    from headroom.server import temporary

    running = temporary.running()
    if running:
        return running[0]
    if "prefect.server.api.server" not in sys.modules:
        return None  # Prefect started none (it imports that module to start one)
    from prefect.server.api.server import SubprocessASGIServer

    servers = [s for s in SubprocessASGIServer._instances.values() if s.server_process]
    return servers[0].server_process.pid if servers else None  # type: ignore[union-attr]


def watch_temporary_server() -> int | None:
    """Start a watchdog that kills this process's temporary Prefect server once this process
    is gone, and give back let-go slots before that server stops at exit. Returns the
    watchdog's pid (None when no temporary server runs here)."""
    server_pid = _temporary_server_pid()
    if server_pid is None or server_pid in _watched:
        return None
    _watched.add(server_pid)
    # atexit runs last-registered first: registered after the server's stop, this runs
    # before it, while the server can still take the slots back.
    atexit.unregister(leases.give_back_kept)
    atexit.register(leases.give_back_kept)
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "headroom.isolation.watchdog", str(os.getpid()), str(server_pid)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the script's group must not stop it first
    )
    return watchdog.pid
