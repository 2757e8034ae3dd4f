"""Budget detection from fake cgroup v1 and v2 trees, the host, and overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headroom import Budget, parse_size
from headroom.units import duckdb_limit
from tests.machine import nvidia_smi_totals_mib

GIB = 1 << 30


def _proc(root: Path, cgroup_lines: str, mem_total_kb: int = 16 * 1024 * 1024) -> Path:
    proc = root / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_lines)
    (proc / "meminfo").write_text(f"MemTotal:       {mem_total_kb} kB\nMemFree: 1 kB\n")
    return proc


def _write(path: Path, text: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / ("memory.max" if "v2" in str(path) else "memory.limit_in_bytes")).write_text(text)


def test_v2_takes_the_tightest_ancestor(tmp_path):
    proc = _proc(tmp_path, "0::/outer/inner/leaf\n")
    root = tmp_path / "v2"
    _write(root / "outer", str(6 * GIB))
    _write(root / "outer" / "inner", str(3 * GIB))  # the tighter ancestor
    _write(root / "outer" / "inner" / "leaf", "max")
    budget = Budget.detect(fraction=0.5, proc_root=proc, cgroup_root=root, environ={})
    assert budget.bytes == int(3 * GIB * 0.5)
    assert budget.cgroup_bytes == 3 * GIB
    assert "cgroup" in budget.source and "inner" in budget.source


def test_v1_memory_controller(tmp_path):
    proc = _proc(tmp_path, "5:cpu:/x\n4:memory:/docker/abc\n0::/\n")
    root = tmp_path / "v1"
    _write(root / "memory", str(9223372036854771712))  # unlimited at the root
    _write(root / "memory" / "docker", str(8 * GIB))
    _write(root / "memory" / "docker" / "abc", str(2 * GIB))
    budget = Budget.detect(proc_root=proc, cgroup_root=root, environ={})
    assert budget.bytes == int(2 * GIB * 0.8)
    assert budget.mb == pytest.approx(2 * 1024 * 0.8, rel=1e-6)


def test_no_cgroup_limit_uses_host_memory(tmp_path):
    proc = _proc(tmp_path, "4:memory:/\n", mem_total_kb=4 * 1024 * 1024)
    root = tmp_path / "v1"
    _write(root / "memory", str(9223372036854771712))
    budget = Budget.detect(proc_root=proc, cgroup_root=root, environ={})
    assert budget.bytes == int(4 * GIB * 0.8)
    assert budget.cgroup_bytes is None
    assert "host memory" in budget.source


def test_namespaced_path_that_does_not_exist_falls_back_to_mount_root(tmp_path):
    proc = _proc(tmp_path, "4:memory:/process_api/abc123\n")
    root = tmp_path / "v1"
    _write(root / "memory", str(1 * GIB))
    budget = Budget.detect(fraction=1.0, proc_root=proc, cgroup_root=root, environ={})
    assert budget.bytes == GIB


def test_override_wins_as_given_and_warns_when_too_big(tmp_path, caplog):
    proc = _proc(tmp_path, "0::/\n", mem_total_kb=1024 * 1024)  # a 1 GiB host
    root = tmp_path / "v2"
    root.mkdir()
    budget = Budget.detect(
        proc_root=proc, cgroup_root=root, environ={"HEADROOM_MEMORY_LIMIT": "1500MB"}
    )
    assert budget.bytes == 1_500_000_000
    assert "HEADROOM_MEMORY_LIMIT" in budget.source
    assert "exceeds" in caplog.text
    assert Budget.detect("2GiB", proc_root=proc, cgroup_root=root, environ={}).bytes == 2 * GIB


def test_per_task_divides():
    budget = Budget(3000 * (1 << 20), "test")
    assert budget.per_task(10) == 300
    with pytest.raises(ValueError):
        budget.per_task(0)


def test_gpu_view_is_what_nvidia_smi_lists():
    # None on a machine without a GPU (never an error); each GPU's total memory where there
    # is one: NVML and nvidia-smi read the same driver.
    totals = nvidia_smi_totals_mib()
    devices = Budget.gpu()
    if not totals:
        assert devices is None
        return
    assert devices is not None
    assert [round(d.total_mb) for d in devices] == pytest.approx(totals, abs=1)
    assert all(0 <= d.free_mb <= d.total_mb for d in devices)


@pytest.mark.parametrize(
    "text, expected",
    [("2GiB", 2 * GIB), ("1500MB", 1_500_000_000), ("512 MiB", 512 << 20), ("100", 100)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_names_the_parameter():
    with pytest.raises(ValueError, match="HEADROOM_MEMORY_LIMIT"):
        parse_size("lots", name="HEADROOM_MEMORY_LIMIT")


def test_duckdb_gets_explicit_mib():
    assert duckdb_limit(300.7) == "300MiB"


def test_oom_kills_are_counted_in_this_process_own_cgroup(tmp_path):
    from headroom.budget import cgroup_oom_kills

    proc = _proc(tmp_path / "a", "0::/jobs/leaf\n")
    root = tmp_path / "a" / "v2"
    _write(root / "jobs" / "leaf", "max")
    (root / "memory.events").write_text("oom 9\noom_kill 9\n")  # the host's, not ours
    (root / "jobs" / "leaf" / "memory.events").write_text("low 0\noom 2\noom_kill 2\n")
    assert cgroup_oom_kills(proc, root) == 2

    proc = _proc(tmp_path / "b", "4:memory:/batch\n0::/\n")
    root = tmp_path / "b" / "v1"
    _write(root / "memory" / "batch", str(GIB))
    (root / "memory" / "batch" / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n"
    )
    assert cgroup_oom_kills(proc, root) == 5
    assert cgroup_oom_kills(_proc(tmp_path / "c", ""), tmp_path / "c") is None


def test_usable_cores_are_the_affinity_bounded_by_the_tightest_cpu_quota(tmp_path):
    from headroom.budget import usable_cores

    affinity = len(os.sched_getaffinity(0))
    proc = _proc(tmp_path / "a", "0::/jobs/leaf\n")
    root = tmp_path / "a" / "v2"
    _write(root / "jobs" / "leaf", "max")
    (root / "jobs" / "leaf" / "cpu.max").write_text("max 100000\n")
    assert usable_cores(proc, root) == affinity
    (root / "jobs" / "cpu.max").write_text("150000 100000\n")  # 1.5 cores: rounded up
    assert usable_cores(proc, root) == min(affinity, 2)
    (root / "jobs" / "leaf" / "cpu.max").write_text("50000 100000\n")
    assert usable_cores(proc, root) == 1
    assert usable_cores(_proc(tmp_path / "c", ""), tmp_path / "c") == affinity
