"""The guard owns every process a call starts: all are gone when the call ends (normal return,
error or out of memory), and children forked together cannot take the tree far past its cap.
Each case runs with a cgroup per call (where this machine allows one) and with the /proc
fallback forced (HEADROOM_CGROUP=0)."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from headroom import OutOfMemory, run_guarded
from headroom.isolation import cgroup as call_cgroup
from tests.conftest import IN_CI
from tests.faults import bodies

CAP_MB = 200


@pytest.fixture(params=["cgroup", "fallback"])
def mode(request, monkeypatch) -> str:
    if request.param == "fallback":
        monkeypatch.setenv(call_cgroup.ENV_CGROUP, "0")
    elif not call_cgroup.available():
        if IN_CI:
            pytest.fail("CI must run the guard in a cgroup per call (writable memory cgroup)")
        pytest.skip("no writable memory cgroup here (v1 hierarchy or v2 subtree)")
    return request.param


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("outcome", ["return", "error", "oom"])
def test_a_grandchild_in_its_own_session_ends_with_the_call(mode, outcome, tmp_path):
    # Without a cgroup the tree is walked at every sample: a process must live one sample
    # (20 ms) to be seen; in a cgroup it is caught from birth.
    settle = 0.0 if mode == "cgroup" else 0.1
    if outcome == "return":
        assert run_guarded(bodies.grandchild_then, outcome, str(tmp_path), settle, cap_mb=CAP_MB)
    elif outcome == "error":
        with pytest.raises(ValueError, match="grandchild running"):
            run_guarded(bodies.grandchild_then, outcome, str(tmp_path), settle, cap_mb=CAP_MB)
    else:
        with pytest.raises(OutOfMemory):
            run_guarded(bodies.grandchild_then, outcome, str(tmp_path), settle, cap_mb=CAP_MB)
    pid = int(Path(tmp_path, "grandchild.pid").read_text())
    assert Path(tmp_path, "grandchild.log").read_text().rstrip().endswith(" 50")  # it ran
    assert _gone_within(pid, 10.0), f"grandchild {pid} outlived the call ({outcome}, {mode})"


def test_allocating_children_cannot_take_the_tree_past_its_cap(mode, tmp_path):
    with pytest.raises(OutOfMemory) as caught:
        run_guarded(bodies.allocating_children, 3, 150, str(tmp_path), cap_mb=CAP_MB)
    peak, started = bodies.peak_held(tmp_path)
    assert started >= 2  # the children did race for memory
    # What the children held by their own account, and what the guard saw of the tree.
    assert peak <= 1.1 * CAP_MB, f"children held {peak} MiB at once ({mode})"
    assert caught.value.peak_mb <= 1.1 * CAP_MB, f"guard saw {caught.value.peak_mb:.0f} MiB"


def test_memory_no_process_maps_is_stopped_by_the_calls_cgroup(tmp_path):
    if not call_cgroup.available():
        if IN_CI:
            pytest.fail("CI must run the guard in a cgroup per call (writable memory cgroup)")
        pytest.skip("no writable memory cgroup here (v1 hierarchy or v2 subtree)")
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm tmpfs here")
    target = shm / f"headroom-test-{tmp_path.name}"
    try:
        with pytest.raises(OutOfMemory) as caught:
            run_guarded(bodies.fill_tmpfs, str(target), 3 * CAP_MB, cap_mb=CAP_MB)
        written = target.stat().st_size / (1 << 20)
    finally:
        target.unlink(missing_ok=True)
    assert caught.value.kind == "oom-killer"
    assert "kernel" in str(caught.value)
    assert CAP_MB * 0.5 < written <= CAP_MB * call_cgroup.HARD_FACTOR  # stopped at the limit


def test_a_call_leaves_no_cgroup_behind(tmp_path):
    if not call_cgroup.available():
        pytest.skip("no writable memory cgroup here (v1 hierarchy or v2 subtree)")
    parent = call_cgroup._parent()
    assert parent is not None
    run_guarded(bodies.grandchild_then, "return", str(tmp_path), cap_mb=CAP_MB)
    with pytest.raises(ValueError):
        run_guarded(bodies.grandchild_then, "error", str(tmp_path), cap_mb=CAP_MB)
    assert not list(parent[0].glob("call-*"))


def test_cgroups_of_a_killed_guarding_process_are_removed_by_the_next(tmp_path):
    if not call_cgroup.available():
        pytest.skip("no writable memory cgroup here (v1 hierarchy or v2 subtree)")
    import subprocess
    import sys

    script = (
        "import os, time\nfrom headroom.isolation import cgroup\n"
        "group = cgroup.for_call(100)\nprint(group.path, flush=True)\ntime.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        left = Path(process.stdout.readline().decode().strip())
        assert left.is_dir()
    finally:
        process.kill()  # no atexit: its cgroups stay
        process.wait()
    assert left.is_dir()
    subprocess.run(
        [sys.executable, "-c", "from headroom.isolation import cgroup; assert cgroup.available()"],
        check=True,
    )
    assert not left.exists() and not left.parent.exists()


def test_a_pid_reused_by_another_process_is_never_killed():
    import subprocess

    from headroom.isolation import proctree

    other = subprocess.Popen(["sleep", "60"])
    try:
        identity = proctree.identity(other.pid)
        assert identity is not None
        # The guard saw a process with this pid that started at another time: not this one.
        assert proctree.end({other.pid: identity[1] - 1}, wait_s=1.0) == []
        assert other.poll() is None
        assert proctree.end({other.pid: identity[1]}, wait_s=5.0) == []
        assert proctree.identity(other.pid) is None  # killed and reaped
    finally:
        other.kill()
        other.wait()
