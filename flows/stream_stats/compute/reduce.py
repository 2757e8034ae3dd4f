"""Window assignment, the per-event watermark and the vectorised per-group reduction.

Pure logic without prefect. The CPU backend of stream_stats; flows.stream_stats.compute.gpu mirrors
:func:`reduce_groups` on CuPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flows.stream_stats.windows import NO_TS, P95, WindowSpec


def assign_windows(ts: np.ndarray, spec: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
    """(event index, window start) for every window each event belongs to."""
    first = ts - np.mod(ts, spec.slide_ms)
    copies = spec.per_event
    if copies == 1:
        return np.arange(len(ts)), first
    index = np.repeat(np.arange(len(ts)), copies)
    back = np.tile(np.arange(copies, dtype=np.int64) * spec.slide_ms, len(ts))
    return index, first[index] - back


def watermark_before(ts: np.ndarray, carried_max: int, watermark_ms: int) -> np.ndarray:
    """The watermark each event meets: newest event time before it, minus the lateness."""
    if len(ts) == 0:
        return np.empty(0, dtype=np.int64)
    seen = np.maximum.accumulate(np.concatenate([[carried_max], ts[:-1]]))
    # No event yet: nothing is late (the subtraction must not wrap around).
    return np.where(seen == NO_TS, NO_TS, seen - watermark_ms)


@dataclass
class Reduction:
    """Per-group aggregates of one batch, groups in ascending id order.

    ``amounts`` holds the amounts grouped by group (the CPU keeps stream order inside a
    group, the GPU sorts by amount), ``starts`` where each group begins in it; ``customers``
    / ``customer_starts`` the distinct (group, customer) pairs, likewise grouped.
    """

    gids: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    m2: np.ndarray
    mins: np.ndarray
    maxs: np.ndarray
    frauds: np.ndarray
    p95: np.ndarray
    distinct: np.ndarray
    starts: np.ndarray
    amounts: np.ndarray
    customers: np.ndarray
    customer_starts: np.ndarray


def reduce_groups(
    gid: np.ndarray, amount: np.ndarray, customer: np.ndarray, fraud: np.ndarray
) -> Reduction:
    """Count, sum, M2, min, max, frauds, exact p95 and exact distinct customers per group."""
    # Events arrive in about event-time order, so group ids come in long ascending runs and
    # a stable (run-merging) sort costs a fraction of a full (group, amount) lexsort.
    order = np.argsort(gid, kind="stable")
    g = gid[order]
    a = amount[order]
    boundary = np.empty(len(g), dtype=bool)
    boundary[:1] = True
    np.not_equal(g[1:], g[:-1], out=boundary[1:])
    starts = np.flatnonzero(boundary)
    counts = np.diff(np.append(starts, len(g)))
    sums = np.add.reduceat(a, starts)
    means = sums / counts
    deviation = a - np.repeat(means, counts)
    m2 = np.add.reduceat(deviation * deviation, starts)
    frauds = np.add.reduceat(fraud[order].astype(np.int64), starts)
    mins = np.minimum.reduceat(a, starts)
    maxs = np.maximum.reduceat(a, starts)
    p95 = _nearest_rank_p95(a, counts, maxs)
    # Distinct customers: sort (dense group, customer) pairs, count first occurrences.
    dense = np.repeat(np.arange(len(starts), dtype=np.int64), counts)
    c = customer[order]
    if len(c) and c.min() >= 0 and c.max() < (1 << 40) and len(starts) < (1 << 23):
        # The packed keys already ascend group by group: the stable sort merges runs.
        packed = np.sort((dense << 40) | c, kind="stable")
        dense_s, c_s = packed >> 40, packed & ((1 << 40) - 1)
    else:
        pair_order = np.lexsort((c, dense))
        dense_s, c_s = dense[pair_order], c[pair_order]
    first = np.empty(len(c_s), dtype=bool)
    first[:1] = True
    first[1:] = (dense_s[1:] != dense_s[:-1]) | (c_s[1:] != c_s[:-1])
    distinct = np.add.reduceat(first.astype(np.int64), starts) if len(starts) else counts
    unique_groups = dense_s[first]
    customer_starts = np.searchsorted(unique_groups, np.arange(len(starts) + 1))
    return Reduction(
        g[starts],
        counts,
        sums,
        m2,
        mins,
        maxs,
        frauds,
        p95,
        distinct,
        starts,
        a,
        c_s[first],
        customer_starts,
    )


def _nearest_rank_p95(grouped: np.ndarray, counts: np.ndarray, maxs: np.ndarray) -> np.ndarray:
    """Exact p95 per group (nearest rank) of amounts grouped but not sorted within groups.

    Below 20 events the nearest rank is the largest amount, so only the events of larger
    groups need sorting: in minute windows that is a small share of a batch.
    """
    rank = np.ceil(P95 * counts).astype(np.int64) - 1
    p95 = maxs.copy()
    large = rank < counts - 1
    if large.any():
        big = np.flatnonzero(large)
        member = np.repeat(large, counts)
        values = grouped[member]
        sizes = counts[big]
        local = np.repeat(np.arange(len(big), dtype=np.int64), sizes)
        values = values[np.lexsort((values, local))]
        p95[big] = values[np.cumsum(sizes) - sizes + rank[big]]
    return p95
