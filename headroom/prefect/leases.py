"""Memory-mb slots held with a lease, through one long-lived client and one renewer per process.

Prefect's ``concurrency()`` opens a new client for the acquisition, starts a renewal thread
with its own client for every hold and releases through a third: about 90 ms per task on
this stack, paid while a tag slot is held and idle. Here the process keeps one client (its
connections stay warm), and one daemon thread renews every live lease and gives back the ones
let go.

A task that ends does not give its slots back at once: for ``KEEP_S`` its lease stays with
the process, and the next task here asking for the same slots of the same limit takes it
over without a request (a mapped task's next item arrives about 0.2 s after the last ends).
Slots nobody here takes are given back when that time is up, so another host or process
waits at most ``KEEP_S`` longer for them.

Semantics are otherwise Prefect's: ``POST /v2/concurrency_limits/increment-with-lease``,
waiting on ``423 Locked`` for the server's ``Retry-After``; a lease the process stops renewing
(it was killed) expires on the server after its duration and its slots come back.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from headroom.errors import TerminalError
from headroom.limits import setup_hint
from headroom.prefect import waiting

# The server's Retry-After follows the limit's average occupancy (up to 30 s); memory frees in
# steps of one task, so a waiter looks again at least this often.
MAX_WAIT_S = 2.0
RENEW_FRACTION = 0.5
KEEP_S = 0.5

_log = logging.getLogger(__name__)


@dataclass
class _Lease:
    id: UUID
    name: str
    slots: int
    duration: float
    api: str | None  # the server it was taken from
    context: contextvars.Context  # the acquirer's: its API settings, for renewal and release
    renew_at: float  # monotonic
    kept_until: float | None = None  # let go by its task: given back then unless taken over


_clients: dict[tuple[int, str | None], Any] = {}
# Seconds each acquisition of this process took, from asking to holding (a take-over counts 0):
# what a task waited for its memory slots, for benchmarks and the debug log.
acquired_s: list[float] = []
_lock = threading.Lock()
_leases: dict[UUID, _Lease] = {}
_renewer: threading.Thread | None = None
_wake = threading.Event()


def _api() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def _client() -> Any:
    """The process's long-lived sync client for the current API (httpx clients are
    thread-safe: every thread shares its pool of warm connections)."""
    from prefect.client.orchestration import get_client

    key = (os.getpid(), _api())
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = get_client(sync_client=True)
            client.__enter__()
            _clients[key] = client
    return client


def acquire(name: str, slots: int, lease_s: float, timeout_s: float | None = None) -> UUID:
    """Take ``slots`` of the global limit ``name``; an error if the limit does not exist."""
    import httpx

    api = _api()
    with _lock:
        for lease in _leases.values():
            if lease.kept_until is not None and (lease.name, lease.slots, lease.api) == (
                name,
                slots,
                api,
            ):
                lease.kept_until = None  # taken over: no request at all
                acquired_s.append(0.0)
                return lease.id
    began = time.monotonic()
    deadline = None if timeout_s is None else began + timeout_s
    next_report = began + waiting.LOG_EVERY_S
    body = {"names": [name], "slots": slots, "mode": "concurrency", "lease_duration": lease_s}
    while True:
        try:
            response = _client().request(
                "POST", "/v2/concurrency_limits/increment-with-lease", json=body
            )
            break
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:
                raise
            wait = min(float(exc.response.headers.get("Retry-After", 1.0)), MAX_WAIT_S)
            if deadline is not None and time.monotonic() + wait > deadline:
                raise TimeoutError(f"no {slots} slots of {name!r} within {timeout_s} s") from None
            time.sleep(wait)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + waiting.LOG_EVERY_S
                try:
                    waiting.log_waiting(f"a task ({slots} slots)", time.monotonic() - began, [name])
                except Exception:  # noqa: BLE001 - a diagnosis must never fail the wait
                    pass
    payload = response.json()
    if not payload.get("limits"):
        raise TerminalError(
            f"the concurrency limit {name!r} does not exist on this Prefect server: {setup_hint()}"
        )
    lease_id = UUID(payload["lease_id"])
    lease = _Lease(
        lease_id,
        name,
        slots,
        lease_s,
        api,
        contextvars.copy_context(),
        time.monotonic() + lease_s * RENEW_FRACTION,
    )
    with _lock:
        _leases[lease_id] = lease
        acquired_s.append(time.monotonic() - began)
    _log.debug("%d slots of %s in %.3f s", slots, name, acquired_s[-1])
    _ensure_renewer()
    _wake.set()  # the renewer may be waiting with nothing to renew
    return lease_id


def let_go(lease_id: UUID) -> None:
    """The holder is done: the slots go back within ``KEEP_S`` unless a task here takes them."""
    with _lock:
        lease = _leases.get(lease_id)
        if lease is not None:
            lease.kept_until = time.monotonic() + KEEP_S
    _wake.set()


def release(lease_id: UUID) -> None:
    """Give the slots back now (a lease already gone on the server is not an error)."""
    import httpx

    with _lock:
        _leases.pop(lease_id, None)
    try:
        _client().request(
            "POST",
            "/v2/concurrency_limits/decrement-with-lease",
            json={"lease_id": str(lease_id)},
        )
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 404:
            raise


@contextmanager
def held(name: str, slots: int, lease_s: float) -> Iterator[UUID]:
    """Hold ``slots`` of ``name`` for the body of the ``with`` (as: the lease's id)."""
    lease_id = acquire(name, slots, lease_s)
    try:
        yield lease_id
    finally:
        let_go(lease_id)


def live_leases() -> list[UUID]:
    """Leases this process holds for a task now (not those let go)."""
    with _lock:
        return [k for k, lease in _leases.items() if lease.kept_until is None]


def give_back_kept() -> None:
    """Give back at once every lease let go and not taken over (before a process ends)."""
    with _lock:
        kept = [lease for lease in _leases.values() if lease.kept_until is not None]
    for lease in kept:
        try:
            lease.context.run(release, lease.id)
        except Exception:  # the server is gone: the lease expires there
            pass


atexit.register(give_back_kept)


def _ensure_renewer() -> None:
    global _renewer
    with _lock:
        if _renewer is not None and _renewer.is_alive():
            return
        _renewer = threading.Thread(
            target=_renew_forever, name="headroom-lease-renewer", daemon=True
        )
        _renewer.start()


def _renew_forever() -> None:
    """Renew each live lease at half its duration; give back those let go and not taken."""
    from prefect.logging.loggers import get_logger

    logger = get_logger("headroom.prefect.leases")
    while True:
        with _lock:
            due = min(
                (
                    min(lease.renew_at, lease.kept_until or lease.renew_at)
                    for lease in _leases.values()
                ),
                default=None,
            )
        _wake.wait(None if due is None else max(0.0, due - time.monotonic()))
        _wake.clear()
        now = time.monotonic()
        with _lock:
            expired = [
                lease
                for lease in _leases.values()
                if lease.kept_until is not None and lease.kept_until <= now
            ]
            for lease in expired:
                del _leases[lease.id]  # nobody can take it over from here on
            renew = [lease for lease in _leases.values() if lease.renew_at <= now]
        for lease in expired:
            try:
                lease.context.run(release, lease.id)
            except Exception as exc:  # it expires on the server instead
                logger.warning("could not give back lease %s: %s", lease.id, exc)
        for lease in renew:
            lease.context.run(_renew, lease, logger)


def _renew(lease: _Lease, logger: Any) -> bool:
    """Renew one lease; True when the server confirmed it."""
    import httpx

    next_in = lease.duration * RENEW_FRACTION
    confirmed = False
    try:
        _client().request(
            "POST",
            "/v2/concurrency_limits/leases/{lease_id}/renew",
            path_params={"lease_id": lease.id},
            json={"lease_duration": lease.duration},
        )
        confirmed = True
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:  # expired or released meanwhile
            with _lock:
                _leases.pop(lease.id, None)
            return False
        logger.warning("could not renew lease %s: %s", lease.id, exc)
    except Exception as exc:  # the server is briefly away: try again soon
        logger.warning("could not renew lease %s: %s", lease.id, exc)
    if not confirmed:
        next_in = min(next_in, 5.0)
    lease.renew_at = time.monotonic() + next_in
    return confirmed


def _after_fork() -> None:
    """A forked child holds none of its parent's leases and has no renewer."""
    global _renewer, _lock
    _lock = threading.Lock()
    _leases.clear()
    acquired_s.clear()
    _renewer = None
    _clients.clear()  # the parent's connections are not this process's to use


os.register_at_fork(after_in_child=_after_fork)
