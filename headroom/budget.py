"""How much memory (and GPU memory) this process and its tasks may use."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from headroom.units import MIB, format_mib, parse_size

log = logging.getLogger(__name__)

ENV_LIMIT = "HEADROOM_MEMORY_LIMIT"
# cgroup v1 writes "no limit" as a page-rounded 2^63 - 1.
_V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as NVML sees it; sizes in MiB."""

    index: int
    name: str
    total_mb: float
    free_mb: float
    utilization_pct: float | None = None


@dataclass(frozen=True)
class Budget:
    """The memory this process tree may use, in bytes, and where the figure came from."""

    bytes: int
    source: str
    host_bytes: int | None = None
    cgroup_bytes: int | None = None

    @property
    def mb(self) -> float:
        """The budget in MiB."""
        return self.bytes / MIB

    def per_task(self, slots: int) -> float:
        """The cap in MiB of one task when ``slots`` tasks share this budget."""
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        return self.mb / slots

    def describe(self) -> str:
        """One line for people: the budget and its source."""
        return f"{format_mib(self.mb)} ({self.source})"

    @classmethod
    def detect(
        cls,
        limit: str | int | None = None,
        fraction: float = 0.8,
        *,
        proc_root: str | os.PathLike[str] = "/proc",
        cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
        environ: dict[str, str] | None = None,
    ) -> Budget:
        """Detect the budget.

        An override (``limit`` or $HEADROOM_MEMORY_LIMIT) is the budget as given. Otherwise it
        is ``fraction`` of the smaller of the host's memory and this process's cgroup limit
        (the tightest of its cgroup and its ancestors; usage is not subtracted).
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        env = os.environ if environ is None else environ
        host = host_memory_bytes(proc_root)
        cgroup, cgroup_where = cgroup_limit_bytes(proc_root, cgroup_root)
        offered = min(x for x in (host, cgroup) if x is not None) if (host or cgroup) else None

        override, origin = None, ""
        if limit is not None:
            override, origin = parse_size(limit, name="limit"), "limit argument"
        elif env.get(ENV_LIMIT):
            override, origin = parse_size(env[ENV_LIMIT], name=ENV_LIMIT), f"${ENV_LIMIT}"
        if override is not None:
            if override <= 0:
                raise ValueError(f"{origin}: the memory limit must be positive")
            if offered is not None and override > offered:
                log.warning(
                    "%s = %s exceeds the %s this machine offers",
                    origin,
                    format_mib(override / MIB),
                    format_mib(offered / MIB),
                )
            return cls(override, f"override from {origin}", host, cgroup)

        if cgroup is not None and (host is None or cgroup < host):
            source = f"{fraction:g} x cgroup limit {format_mib(cgroup / MIB)} at {cgroup_where}"
        elif host is not None:
            source = f"{fraction:g} x host memory {format_mib(host / MIB)}"
        else:
            raise RuntimeError(
                "cannot detect memory: no MemTotal in /proc/meminfo and no cgroup limit; "
                f"set {ENV_LIMIT}"
            )
        assert offered is not None
        return cls(int(offered * fraction), source, host, cgroup)

    @staticmethod
    def gpu() -> list[GpuDevice] | None:
        """Per-device total and free memory from NVML; None without NVML or a GPU."""
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:
            return None
        try:
            devices = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                name = pynvml.nvmlDeviceGetName(handle)
                try:
                    utilization = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except Exception:
                    utilization = None
                devices.append(
                    GpuDevice(
                        index,
                        name.decode() if isinstance(name, bytes) else str(name),
                        memory.total / MIB,
                        memory.free / MIB,
                        utilization,
                    )
                )
            return devices or None
        except Exception:
            return None
        finally:
            try:
                pynvml.nvmlShutdown()
            except Exception:
                pass


def host_memory_bytes(proc_root: str | os.PathLike[str] = "/proc") -> int | None:
    """MemTotal from /proc/meminfo, in bytes."""
    try:
        for line in Path(proc_root, "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def own_memory_cgroup(
    proc_root: str | os.PathLike[str], cgroup_root: str | os.PathLike[str]
) -> tuple[Path, Path, str] | None:
    """(mount of the memory hierarchy, this process's cgroup under it, "v1" or "v2"), from
    /proc/self/cgroup; None when the process is in no memory cgroup.

    Inside a container the path in /proc/self/cgroup may name a directory the namespace does
    not show; then the mounted root itself is this process's cgroup.
    """
    try:
        lines = Path(proc_root, "self", "cgroup").read_text().splitlines()
    except OSError:
        return None
    v1_path = v2_path = None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            v1_path = path
        elif hierarchy == "0" and controllers == "":
            v2_path = path
    root = Path(cgroup_root)
    if v1_path is not None:
        base, version, path = (
            (root / "memory" if (root / "memory").is_dir() else root),
            "v1",
            v1_path,
        )
    elif v2_path is not None:
        unified = (root / "unified" / "cgroup.controllers").exists()
        base, version, path = (root / "unified" if unified else root), "v2", v2_path
    else:
        return None
    relative = Path(path.lstrip("/"))
    while relative.parts and not (base / relative).is_dir():
        relative = Path(*relative.parts[1:]) if len(relative.parts) > 1 else Path()
    return base, relative, version


def cgroup_limit_bytes(
    proc_root: str | os.PathLike[str] = "/proc",
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
) -> tuple[int | None, str]:
    """The tightest memory limit over this process's cgroup and its ancestors (v1 or v2)."""
    found = own_memory_cgroup(proc_root, cgroup_root)
    if found is None:
        return None, ""
    base, current, version = found
    file_name = "memory.limit_in_bytes" if version == "v1" else "memory.max"
    best: int | None = None
    where = ""
    while True:
        value = _read_limit(base / current / file_name)
        if value is not None and (best is None or value < best):
            best, where = value, str(base / current / file_name)
        if not current.parts:
            break
        current = current.parent if len(current.parts) > 1 else Path()
    return best, where


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    value = int(text)
    return None if value >= _V1_UNLIMITED else value


def usable_cores(
    proc_root: str | os.PathLike[str] = "/proc",
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
) -> int:
    """Cores this process may run on: its CPU affinity, bounded by the tightest cgroup v2
    ``cpu.max`` quota over its cgroup and ancestors (rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    found = own_memory_cgroup(proc_root, cgroup_root)
    if found is not None and found[2] == "v2":
        base, current = found[0], found[1]
        while True:
            try:
                quota, period = (base / current / "cpu.max").read_text().split()[:2]
                if quota != "max" and int(period) > 0:
                    cores = min(cores, -(-int(quota) // int(period)))
            except (OSError, ValueError):
                pass
            if not current.parts:
                break
            current = current.parent if len(current.parts) > 1 else Path()
    return max(1, cores)


def cgroup_oom_kills(
    proc_root: str | os.PathLike[str] = "/proc",
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
) -> int | None:
    """The OOM-kill counter of this process's memory cgroup (v2 ``memory.events`` counts its
    whole subtree, v1 ``memory.oom_control`` the group), where the kernel exposes one."""
    found = own_memory_cgroup(proc_root, cgroup_root)
    if found is None:
        return None
    base, relative, version = found
    if version == "v2":
        return _read_counter(base / relative / "memory.events", "oom_kill")
    return _read_counter(base / relative / "memory.oom_control", "oom_kill")


def _read_counter(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None
