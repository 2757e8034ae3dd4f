"""The one declaration of limits: caps, the host reserve, and cap overrides."""

from __future__ import annotations

import logging

from headroom import Budget
from headroom.limits import Limits

GIB = 1 << 30


def test_declared_caps_and_the_host_limit_follow_the_budget(tmp_path):
    declaration = tmp_path / "limits.toml"
    declaration.write_text(
        'reserve_mb = 300\n[tags.heavy]\nslots = 2\ncap = "1GiB"\n[tags.light]\nslots = 4\n'
    )
    limits = Limits.load(declaration)
    budget = Budget.detect(limit="4GiB")
    assert limits.host_limit_mb(budget) == 4096 - 300
    assert limits.cap_mb("heavy", budget) == 1024
    assert limits.cap_mb("light", budget) == budget.per_task(4)


def test_cap_overrides_replace_declared_caps_and_skip_unknown_tags(tmp_path, caplog):
    limits = Limits.load()  # deployments/limits.toml
    budget = Budget.detect(limit="4GiB")
    with caplog.at_level(logging.WARNING, logger="headroom.limits"):
        changed = limits.with_caps({"mitma-od": "123MiB", "mitma_od": "1MiB"}, "test block")
    assert changed.cap_mb("mitma-od", budget) == 123
    assert changed.cap_mb("fraud-gen", budget) == limits.cap_mb("fraud-gen", budget)
    assert "mitma_od" not in changed.tags
    assert "'mitma_od'" in caplog.text and "does not declare" in caplog.text


def test_cpu_bound_tasks_of_a_process_run_no_more_at_once_than_cores():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from headroom.budget import usable_cores
    from headroom.prefect import cpu_slots

    lock = threading.Lock()
    running, most = [0], [0]

    def body(threads: int | None) -> None:
        with cpu_slots(threads):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.2)
            with lock:
                running[0] -= 1

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(body, [1] * 6))
    assert most[0] == min(6, usable_cores())
    most[0] = 0
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(body, [None] * 6))  # not CPU-bound: no bound
    assert most[0] == 6
