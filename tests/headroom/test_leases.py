"""Memory slots held with leases on a real Prefect server: hold, wait, renew, missing limit."""

from __future__ import annotations

import contextvars
import threading
import time
import uuid

import pytest
from prefect.client.orchestration import get_client

from headroom.errors import TerminalError
from headroom.prefect import leases

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def limit_name():
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"test-lease-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=100))
    yield name
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(name)


def _active(name: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def _wait_for_active(name: str, wanted: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while _active(name) != wanted:
        assert time.monotonic() < deadline, f"{name}: {_active(name)} slots held, not {wanted}"
        time.sleep(0.05)


def test_held_slots_show_on_the_server_and_come_back(limit_name):
    with leases.held(limit_name, 70, 60) as lease_id:
        assert _active(limit_name) == 70
        assert lease_id in leases.live_leases()
    assert lease_id not in leases.live_leases()  # let go: kept for the next task, not live
    _wait_for_active(limit_name, 0, leases.KEEP_S + 5)


def test_the_next_task_takes_over_slots_let_go_without_asking_again(limit_name):
    first = leases.acquire(limit_name, 70, 60)
    leases.let_go(first)
    second = leases.acquire(limit_name, 70, 60)
    assert second == first and _active(limit_name) == 70  # 70, not 140 nor 0
    other = leases.acquire(limit_name, 20, 60)  # other slots: a lease of their own
    assert other != first and _active(limit_name) == 90
    leases.release(other)
    leases.let_go(second)
    _wait_for_active(limit_name, 0, leases.KEEP_S + 5)


def test_a_second_holder_waits_for_the_first(limit_name, monkeypatch):
    monkeypatch.setattr(leases, "MAX_WAIT_S", 0.2)
    first = leases.acquire(limit_name, 70, 60)
    got_at: list[float] = []

    def second() -> None:
        with leases.held(limit_name, 70, 60):
            got_at.append(time.monotonic())

    thread = threading.Thread(target=contextvars.copy_context().run, args=(second,))
    thread.start()
    time.sleep(1.0)
    assert not got_at, "70 + 70 slots of a 100-slot limit were held at once"
    released_at = time.monotonic()
    leases.release(first)
    thread.join(timeout=30)
    assert got_at and got_at[0] >= released_at
    _wait_for_active(limit_name, 0, leases.KEEP_S + 5)


def test_leases_are_renewed_while_held(limit_name, monkeypatch):
    monkeypatch.setattr(leases, "RENEW_FRACTION", 0.02)  # every 1.2 s of a 60 s lease
    answers: list[tuple[uuid.UUID, bool]] = []
    renew = leases._renew

    def recording(lease, logger):
        answers.append((lease.id, renew(lease, logger)))

    monkeypatch.setattr(leases, "_renew", recording)
    lease_id = leases.acquire(limit_name, 5, 60)
    try:
        time.sleep(3.5)
    finally:
        leases.release(lease_id)
    confirmed = [ok for held_id, ok in answers if held_id == lease_id]
    assert len(confirmed) >= 2 and all(confirmed), answers
    count = len(answers)
    time.sleep(1.5)
    assert all(held_id != lease_id for held_id, _ in answers[count:]), "renewed after release"


def test_a_missing_limit_is_a_clear_error():
    with pytest.raises(TerminalError, match="no-such-limit-.*does not exist"):
        leases.acquire(f"no-such-limit-{uuid.uuid4().hex[:6]}", 1, 60)
