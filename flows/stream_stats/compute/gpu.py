"""The GPU backend of stream_stats: the per-group reduction on CuPy.

Imported only when backend=gpu is chosen (``import cupy`` costs seconds and a CUDA context).
Runs in the guarded child of a ``gpu``-tagged task, so each task has its own process with one
CUDA context. CuPy's memory pool is capped at the GPU's total memory divided by the ``gpu``
tag's slots (10: the old 0.1 GPU per task); a CUDA out-of-memory becomes
``OutOfMemory(kind="gpu")`` and the task retries with a smaller micro-batch.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from flows.stream_stats.compute.reduce import Reduction
from flows.stream_stats.windows import P95
from headroom.errors import OutOfMemory

log = logging.getLogger(__name__)
MIB = 1 << 20


def gpu_slots() -> int:
    """Slots of the ``gpu`` tag (deployments/limits.toml), 10 when undeclared."""
    try:
        from headroom.limits import Limits

        return Limits.load().tag("gpu").slots
    except Exception:
        return 10


def available() -> tuple[bool, str]:
    """(True, device) when NVML sees a GPU and CuPy imports, else (False, why not)."""
    from headroom.budget import Budget

    devices = Budget.gpu()
    if not devices:
        return False, "NVML sees no GPU"
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA library mismatch
        return False, f"CuPy does not import ({type(exc).__name__}: {exc})"
    return True, devices[0].name


class GpuReducer:
    """reduce_groups on the GPU, under a capped CuPy memory pool."""

    def __init__(self, slots: int | None = None) -> None:
        import cupy as cp

        self.cp = cp
        total = cp.cuda.Device().mem_info[1]
        self.limit = total // (slots or gpu_slots())
        cp.get_default_memory_pool().set_limit(size=self.limit)
        log.info(
            "CuPy memory pool capped at %.0f MiB (total %.0f MiB)", self.limit / MIB, total / MIB
        )

    def reduce(
        self, gid: np.ndarray, amount: np.ndarray, customer: np.ndarray, fraud: np.ndarray
    ) -> Reduction:
        """Count, sum, M2, min, max, frauds, exact p95 and distinct customers per group."""
        cp = self.cp
        try:
            return self._reduce(gid, amount, customer, fraud)
        except cp.cuda.memory.OutOfMemoryError as exc:
            cp.get_default_memory_pool().free_all_blocks()
            raise OutOfMemory(
                "gpu", self.limit / MIB, None, len(gid), detail=f"CUDA out of memory: {exc}"
            ) from None

    def _reduce(
        self, gid: np.ndarray, amount: np.ndarray, customer: np.ndarray, fraud: np.ndarray
    ) -> Reduction:
        cp = self.cp
        g_all = cp.asarray(gid)
        a_all = cp.asarray(amount)
        # Sort by (group, amount): by amount, then stably by group.
        by_amount = cp.argsort(a_all)
        order = by_amount[cp.argsort(g_all[by_amount], kind="stable")]
        g = g_all[order]
        a = a_all[order]
        boundary = cp.empty(len(g), dtype=bool)
        boundary[:1] = True
        boundary[1:] = g[1:] != g[:-1]
        starts = cp.flatnonzero(boundary)
        counts = cp.diff(cp.concatenate([starts, cp.asarray([len(g)])]))
        dense = cp.cumsum(boundary) - 1
        sums = cp.zeros(len(starts), dtype=cp.float64)
        cp.add.at(sums, dense, a)
        means = sums / counts
        deviation = a - means[dense]
        m2 = cp.zeros(len(starts), dtype=cp.float64)
        cp.add.at(m2, dense, deviation * deviation)
        frauds = cp.zeros(len(starts), dtype=cp.int64)
        cp.add.at(frauds, dense, cp.asarray(fraud)[order].astype(cp.int64))
        p95 = a[starts + cp.ceil(P95 * counts).astype(cp.int64) - 1]
        c = cp.asarray(customer)[order]
        pair = cp.lexsort(cp.stack([c, dense]))
        dense_s, c_s = dense[pair], c[pair]
        first = cp.empty(len(c_s), dtype=bool)
        first[:1] = True
        first[1:] = (dense_s[1:] != dense_s[:-1]) | (c_s[1:] != c_s[:-1])
        distinct = cp.zeros(len(starts), dtype=cp.int64)
        cp.add.at(distinct, dense_s, first.astype(cp.int64))
        unique_groups = dense_s[first]
        customer_starts = cp.searchsorted(unique_groups, cp.arange(len(starts) + 1))
        host: Any = cp.asnumpy
        return Reduction(
            host(g[starts]),
            host(counts),
            host(sums),
            host(m2),
            host(a[starts]),
            host(a[starts + counts - 1]),
            host(frauds),
            host(p95),
            host(distinct),
            host(starts),
            host(a),
            host(c_s[first]),
            host(customer_starts),
        )
