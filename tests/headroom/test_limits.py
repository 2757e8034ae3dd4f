"""The one declaration of limits: caps, the host reserve, and cap overrides."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import headroom.limits
from headroom import Budget
from headroom.limits import GENERIC_SETUP_HINT, Limits, declaration_file, setup_hint

ROOT = Path(__file__).resolve().parents[2]

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


def test_the_declaration_is_the_projects_setting_found_from_the_current_directory(
    tmp_path, monkeypatch
):
    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    (project / "conf" / "limits.toml").write_text("[tags.only]\nslots = 3\n")
    (project / "pyproject.toml").write_text(
        '[tool.headroom]\nlimits = "conf/limits.toml"\nsetup = "run make limits first"\n'
    )
    (project / "deep" / "er").mkdir(parents=True)
    monkeypatch.delenv("HEADROOM_LIMITS", raising=False)
    monkeypatch.setattr(headroom.limits, "_declared", None)  # no application imported
    monkeypatch.chdir(project / "deep" / "er")
    assert declaration_file() == project / "conf" / "limits.toml"
    assert list(Limits.load().tags) == ["only"]
    assert setup_hint() == "run make limits first"
    monkeypatch.setenv("HEADROOM_LIMITS", str(ROOT / "deployments" / "limits.toml"))
    assert "only" not in Limits.load().tags  # the variable wins


def test_no_declaration_anywhere_says_how_to_give_one(tmp_path, monkeypatch):
    monkeypatch.delenv("HEADROOM_LIMITS", raising=False)
    monkeypatch.setattr(headroom.limits, "_declared", None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"HEADROOM_LIMITS.*\[tool.headroom\]"):
        Limits.load()
    assert setup_hint() == GENERIC_SETUP_HINT


def test_a_script_outside_the_checkout_finds_the_workloads_declaration(tmp_path):
    """Importing the workloads names deployments/limits.toml: a script run from any directory
    (a user's, a Dask worker's) loads it without HEADROOM_LIMITS."""
    env = {k: v for k, v in os.environ.items() if k != "HEADROOM_LIMITS"}
    code = "import flows; from headroom.limits import Limits; print(Limits.load().source)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(ROOT / "deployments" / "limits.toml")


def test_the_projects_own_declaration_and_setup_hint_from_its_root():
    # What `python -m headroom` and a deployment's flow run (working directory: the
    # checkout) read when $HEADROOM_LIMITS is not set.
    env = {"PATH": "/usr/bin:/bin", "HEADROOM_MEMORY_LIMIT": "4GiB"}
    code = (
        "from headroom.limits import Limits, setup_hint; "
        "print(Limits.load().source); print(setup_hint())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [
        str(ROOT / "deployments" / "limits.toml"),
        "run `python -m deployments.setup` on this host first",
    ]


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
