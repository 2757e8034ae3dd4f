"""Windowed statistics over a transaction stream: window assignment, watermark, mergeable state.

Pure logic without prefect (guarded children start fast; tests need no server). One
micro-batch of events goes in; per (window, key) the count, sum, mean, standard deviation,
min, max, fraud count, p95 of ``amount`` and distinct customers come out, in a DuckDB sink.

Semantics (the same for every batch size, so a crash and a re-run give identical answers):

* Event time. An event at ``ts`` belongs to the windows ``[start, start + window)`` with
  ``start`` a multiple of ``slide`` (tumbling when ``slide == window``).
* Watermark. Before event *i* the watermark is ``max(ts of events before i) - watermark``.
  An event updates a window only while ``window_end > watermark``; otherwise it is late and
  counted per (window, key) in ``stream_late`` - never dropped silently. A window closes
  (its row becomes final) when the watermark passes its end.
* Mergeable state. Open windows keep their moments (count, mean, M2: Chan's parallel merge)
  and two sketches serialised in ``stream_open``: a KLL sketch (k=200) for p95 and an HLL
  sketch (lg_k=12, HLL_8) for distinct customers, so they carry across batches and runs.
* Error. A window that opens and closes inside one micro-batch gets an exact p95 (nearest
  rank: the smallest amount with at least 95 % of amounts at or below it) and an exact
  distinct count. A window that spans batches gets the KLL p95, whose normalised rank is
  within +/-1.33 % of 0.95 with 99 % confidence, and the HLL distinct count, within 3.8 %
  relative error with 99.7 % confidence (exact-looking below a few hundred: list mode).
  ``p95_exact`` / ``distinct_exact`` say which one a row holds.
* Exactly once. Every micro-batch's window updates, the last applied stream ID and the
  watermark are committed in one DuckDB transaction; entries at or below that ID are skipped
  when delivered again. The source is acknowledged only after the commit.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from headroom.errors import BadInput, TerminalError
from headroom.units import duckdb_limit

if TYPE_CHECKING:
    from flows.stream_sources import EventBatch

log = logging.getLogger(__name__)

KEY_FIELDS = ("merchant_category", "channel")
KLL_K = 200
HLL_LG_K = 12
P95 = 0.95
# Stated sketch errors (datasketches' own bounds for these parameters).
KLL_RANK_ERROR = 0.0133  # normalised rank error, 99 % confidence, k=200
HLL_REL_ERROR = 0.038  # relative error, 3 standard deviations, lg_k=12
SCHEMA_VERSION = 1
NO_TS = np.iinfo(np.int64).min
CRASH_ENV = "HEADROOM_STREAM_CRASH"  # fault drill: "after-read:N" or "after-commit:N"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*$", re.I)
_UNIT_MS = {
    "ms": 1,
    "s": 1000,
    "sec": 1000,
    "m": 60_000,
    "min": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}


def parse_duration_ms(value: str | int | float, *, name: str) -> int:
    """Milliseconds from '500ms', '30s', '1min' (or '1m'), '2h', '1d', or plain seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        millis = float(value) * 1000
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise BadInput(f"parameter {name}: {value!r} is not a duration like 30s, 1min, 2h")
        millis = float(match.group(1)) * _UNIT_MS[(match.group(2) or "s").lower()]
    if millis < 0 or millis != int(millis):
        raise BadInput(f"parameter {name}: {value!r} must be a whole, non-negative ms count")
    return int(millis)


class StreamParams(BaseModel):
    """Parameters of one bounded run of the stream_stats flow, validated before any work."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        description="A fraud_synth dataset directory (embedded) or "
        "redis://host:port/db?stream=KEY&group=NAME."
    )
    window: str = Field("1min", description="Window length (tumbling), e.g. 30s, 1min, 1h.")
    slide: str | None = Field(None, description="Slide for hopping windows; divides window.")
    watermark: str = Field("5min", description="Allowed lateness behind the newest event.")
    max_batch: int = Field(
        262_144,
        ge=1_000,
        le=10_000_000,
        description="Events per micro-batch (shrinks on out-of-memory).",
    )
    max_duration: str = Field("4min", description="The run ends by itself after this long.")
    max_events: int | None = Field(None, ge=1, description="The run ends after this many.")
    backend: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="auto: GPU if NVML sees one and CuPy imports, else CPU."
    )
    sink: str = Field(description="DuckDB database file holding the windows and the progress.")
    keys: list[str] = Field(
        default_factory=lambda: list(KEY_FIELDS), description="Group-by fields besides the window."
    )

    @field_validator("keys")
    @classmethod
    def _known_keys(cls, keys: list[str]) -> list[str]:
        unknown = [k for k in keys if k not in KEY_FIELDS]
        if unknown or len(set(keys)) != len(keys):
            raise ValueError(f"keys: {keys} must be distinct names from {list(KEY_FIELDS)}")
        return keys

    @model_validator(mode="after")
    def _durations(self) -> StreamParams:
        window = parse_duration_ms(self.window, name="window")
        slide = parse_duration_ms(self.slide, name="slide") if self.slide else window
        parse_duration_ms(self.watermark, name="watermark")
        if parse_duration_ms(self.max_duration, name="max_duration") <= 0:
            raise ValueError("max_duration must be positive")
        if window <= 0 or slide <= 0 or window % slide:
            raise ValueError(
                f"window ({self.window}) must be a positive multiple of slide ({self.slide})"
            )
        return self

    def spec(self) -> WindowSpec:
        """The window configuration in milliseconds."""
        window = parse_duration_ms(self.window, name="window")
        return WindowSpec(
            window_ms=window,
            slide_ms=parse_duration_ms(self.slide, name="slide") if self.slide else window,
            watermark_ms=parse_duration_ms(self.watermark, name="watermark"),
            keys=tuple(self.keys),
        )


@dataclass(frozen=True)
class WindowSpec:
    """Window length, slide and allowed lateness (ms) and the group-by keys."""

    window_ms: int
    slide_ms: int
    watermark_ms: int
    keys: tuple[str, ...] = KEY_FIELDS

    @property
    def per_event(self) -> int:
        """Windows each event belongs to."""
        return self.window_ms // self.slide_ms

    def as_config(self) -> dict[str, str]:
        return {
            "window_ms": str(self.window_ms),
            "slide_ms": str(self.slide_ms),
            "watermark_ms": str(self.watermark_ms),
            "keys": ",".join(self.keys),
            "schema_version": str(SCHEMA_VERSION),
        }


# ---------------------------------------------------------------------------------------------
# Window assignment and the per-event watermark


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


# ---------------------------------------------------------------------------------------------
# Vectorised per-group reduction (the CPU backend; flows.stream_gpu mirrors it on CuPy)


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


# ---------------------------------------------------------------------------------------------
# Open windows: moments plus sketches, merged across batches


@dataclass
class OpenWindow:
    """The state of one (window, key) that may still receive events."""

    window_start: int
    keys: tuple[str, ...]
    events: int = 0
    amount_sum: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    amount_min: float = math.inf
    amount_max: float = -math.inf
    fraud_events: int = 0
    kll: Any = None
    hll: Any = None
    exact: bool = True  # still holding every value (p95 / distinct not yet estimated)

    def merge(
        self,
        count: int,
        total: float,
        m2: float,
        low: float,
        high: float,
        frauds: int,
        amounts: np.ndarray,
        customers: np.ndarray,
    ) -> None:
        """Fold one batch's aggregates for this group in (Chan et al. for the moments)."""
        import datasketches as ds

        if self.kll is None:
            self.kll = ds.kll_doubles_sketch(KLL_K)
            self.hll = ds.hll_sketch(HLL_LG_K, ds.tgt_hll_type.HLL_8)
        before = self.events
        n = before + count
        batch_mean = total / count
        delta = batch_mean - self.mean
        self.mean += delta * count / n
        self.m2 += m2 + delta * delta * before * count / n
        self.events = n
        self.amount_sum += total
        self.amount_min = min(self.amount_min, low)
        self.amount_max = max(self.amount_max, high)
        self.fraud_events += frauds
        self.kll.update(amounts)
        update = self.hll.update
        for customer in customers.tolist():
            update(customer)

    def p95(self) -> tuple[float, bool]:
        """(p95 of amount, whether it is exact)."""
        exact = not self.kll.is_estimation_mode()
        return float(self.kll.get_quantile(P95, True)), exact

    def distinct(self) -> tuple[int, bool]:
        """(distinct customers, whether it is exact): HLL list mode counts every coupon."""
        return int(round(self.hll.get_estimate())), False


def _std(m2: np.ndarray | float, n: np.ndarray | int) -> Any:
    """Sample standard deviation (ddof 1); NaN for a single event."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.asarray(n) > 1, np.sqrt(np.asarray(m2) / (np.asarray(n) - 1)), np.nan)


# ---------------------------------------------------------------------------------------------
# The DuckDB sink


def _key_ddl(keys: tuple[str, ...]) -> str:
    return "".join(f", {k} VARCHAR" for k in keys)


_STAT_DDL = (
    "window_start_ms BIGINT, window_end_ms BIGINT{keys}, events BIGINT, "
    "amount_sum DOUBLE, amount_mean DOUBLE, amount_m2 DOUBLE, amount_std DOUBLE, "
    "amount_min DOUBLE, amount_max DOUBLE, fraud_events BIGINT, amount_p95 DOUBLE, "
    "p95_exact BOOLEAN, distinct_customers BIGINT, distinct_exact BOOLEAN"
)
STAT_COLUMNS = (
    "window_start_ms",
    "window_end_ms",
    "events",
    "amount_sum",
    "amount_mean",
    "amount_m2",
    "amount_std",
    "amount_min",
    "amount_max",
    "fraud_events",
    "amount_p95",
    "p95_exact",
    "distinct_customers",
    "distinct_exact",
)


def _schema(keys: tuple[str, ...]) -> list[str]:
    stat = _STAT_DDL.format(keys=_key_ddl(keys))
    key_list = "".join(f", {k}" for k in keys)
    stats = ", ".join(f"w.{c}" for c in STAT_COLUMNS[3:])
    return [
        "CREATE TABLE IF NOT EXISTS stream_config (name VARCHAR PRIMARY KEY, value VARCHAR)",
        "CREATE TABLE IF NOT EXISTS stream_progress (id INTEGER PRIMARY KEY, source VARCHAR, "
        "last_hi BIGINT, last_lo BIGINT, max_ts BIGINT, events BIGINT, late_events BIGINT, "
        "rejected BIGINT, batches BIGINT)",
        f"CREATE TABLE IF NOT EXISTS stream_windows ({stat})",
        f"CREATE TABLE IF NOT EXISTS stream_open (group_key VARCHAR, {stat}, kll BLOB, hll BLOB)",
        "CREATE TABLE IF NOT EXISTS stream_late (window_start_ms BIGINT, window_end_ms BIGINT"
        f"{_key_ddl(keys)}, late_events BIGINT)",
        "CREATE TABLE IF NOT EXISTS stream_rejects (entry_id VARCHAR, reason VARCHAR)",
        "CREATE TABLE IF NOT EXISTS stream_batches (batch BIGINT, backend VARCHAR, "
        "events BIGINT, late_events BIGINT, skipped BIGINT, seconds DOUBLE, last_id VARCHAR, "
        "max_ts BIGINT, committed_at TIMESTAMP)",
        # One row per (window, key): final and still-open windows, plus late counts.
        "CREATE OR REPLACE VIEW window_stats AS "
        f"WITH w AS (SELECT *, true AS final FROM stream_windows UNION ALL BY NAME "
        f"SELECT * EXCLUDE (group_key, kll, hll), false AS final FROM stream_open), "
        f"l AS (SELECT window_start_ms, window_end_ms{key_list}, sum(late_events) AS late_events "
        f"FROM stream_late GROUP BY ALL) "
        f"SELECT window_start_ms, window_end_ms, epoch_ms(window_start_ms) AS window_start, "
        f"epoch_ms(window_end_ms) AS window_end{key_list}, coalesce(w.events, 0) AS events, "
        f"{stats}, w.fraud_events / w.events AS fraud_rate, coalesce(w.final, false) AS final, "
        f"coalesce(l.late_events, 0)::BIGINT AS late_events "
        f"FROM w FULL OUTER JOIN l USING (window_start_ms, window_end_ms{key_list})",
    ]


@contextmanager
def sink_lock(sink: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the one-consumer-per-sink lock (released by the kernel if the holder dies)."""
    path = Path(f"{os.fspath(sink)}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TerminalError(
                f"sink {sink} is in use by another stream_stats consumer (lock {path})"
            ) from None
        yield


class StreamState:
    """The sink: open windows in memory, every change committed with the stream position."""

    def __init__(
        self,
        sink: str | os.PathLike[str],
        spec: WindowSpec,
        source_name: str,
        memory_mb: float | None = None,
    ) -> None:
        import duckdb

        self.spec = spec
        self.sink = os.fspath(sink)
        Path(self.sink).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = duckdb.connect(self.sink)
        except duckdb.IOException as exc:
            raise TerminalError(f"sink {self.sink}: cannot open ({exc})") from None
        if memory_mb:
            self.db.execute(f"SET memory_limit = '{duckdb_limit(memory_mb)}'")
        # One micro-batch's insert is far below what DuckDB splits across threads; a second
        # thread only adds wake-ups on these shared two-core machines.
        self.db.execute("SET threads = 1")
        for statement in _schema(spec.keys):
            self.db.execute(statement)
        self._check_config(source_name)
        row = self.db.execute(
            "SELECT last_hi, last_lo, max_ts, events, late_events, rejected, "
            "batches FROM stream_progress WHERE id = 1"
        ).fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO stream_progress VALUES (1, ?, -1, -1, ?, 0, 0, 0, 0)",
                [source_name, int(NO_TS)],
            )
            row = (-1, -1, int(NO_TS), 0, 0, 0, 0)
        self.last_id = (int(row[0]), int(row[1]))
        self.max_ts = int(row[2])
        self.events, self.late_events, self.rejected, self.batches = (int(x) for x in row[3:])
        self.open: dict[tuple[int, tuple[str, ...]], OpenWindow] = {}
        self._load_open()

    def _check_config(self, source_name: str) -> None:
        wanted = {**self.spec.as_config(), "source": source_name}
        stored = dict(self.db.execute("SELECT name, value FROM stream_config").fetchall())
        if not stored:
            self.db.executemany("INSERT INTO stream_config VALUES (?, ?)", list(wanted.items()))
            return
        names = {
            "window_ms": "window",
            "slide_ms": "slide",
            "watermark_ms": "watermark",
            "keys": "keys",
            "source": "source",
            "schema_version": "sink",
        }
        for name, value in wanted.items():
            if stored.get(name) != value:
                raise BadInput(
                    f"parameter {names[name]}: sink {self.sink} was built with {name}="
                    f"{stored.get(name)!r}, this run has {value!r}; use a new sink file"
                )

    def _load_open(self) -> None:
        import datasketches as ds

        keys = ", ".join(self.spec.keys)
        rows = self.db.execute(
            f"SELECT window_start_ms{', ' + keys if keys else ''}, events, amount_sum, "
            "amount_mean, amount_m2, amount_min, amount_max, fraud_events, kll, hll "
            "FROM stream_open"
        ).fetchall()
        nkeys = len(self.spec.keys)
        for row in rows:
            start, key = int(row[0]), tuple(row[1 : 1 + nkeys])
            (events, total, mean, m2, low, high, frauds, kll, hll) = row[1 + nkeys :]
            self.open[(start, key)] = OpenWindow(
                start,
                key,
                int(events),
                float(total),
                float(mean),
                float(m2),
                float(low),
                float(high),
                int(frauds),
                ds.kll_doubles_sketch.deserialize(bytes(kll)),
                ds.hll_sketch.deserialize(bytes(hll)),
            )

    @property
    def watermark(self) -> int:
        return NO_TS if self.max_ts == NO_TS else self.max_ts - self.spec.watermark_ms

    def close(self) -> None:
        self.db.close()

    # -----------------------------------------------------------------------------------------

    def apply(self, batch: EventBatch, backend: str = "cpu", reduce: Any = None) -> dict[str, Any]:
        """Fold one micro-batch into the windows and commit it with its last stream ID."""
        import pyarrow as pa

        started = time.perf_counter()
        spec = self.spec
        fresh = batch.after(self.last_id)
        skipped = len(batch) - len(fresh)
        rejects = batch.rejects
        if len(fresh) == 0 and not rejects:
            return {"events": 0, "late": 0, "skipped": skipped, "seconds": 0.0, "groups": 0}
        ts = fresh.ts
        wm = watermark_before(ts, self.max_ts, spec.watermark_ms)
        event, starts = assign_windows(ts, spec)
        ends = starts + spec.window_ms
        accepted = ends > wm[event]
        combo, decode = fresh.key_combos(spec.keys)
        n_combo = max(1, len(decode))
        late_mask = ~accepted
        late_events = int(np.unique(event[late_mask]).size) if late_mask.any() else 0
        new_max = max(self.max_ts, int(ts.max())) if len(ts) else self.max_ts
        new_wm = NO_TS if new_max == NO_TS else new_max - spec.watermark_ms

        tables: dict[str, pa.Table] = {}
        if late_mask.any():
            late_gid = (starts[late_mask] // spec.slide_ms) * n_combo + combo[event[late_mask]]
            ids, counts = np.unique(late_gid, return_counts=True)
            tables["late"] = self._rows(ids, n_combo, decode, {"late_events": counts})

        closed_parts: list[pa.Table] = []
        dirty: set[tuple[int, tuple[str, ...]]] = set()
        groups = 0
        if accepted.any():
            idx = event[accepted]
            gid = (starts[accepted] // spec.slide_ms) * n_combo + combo[idx]
            reducer = reduce or reduce_groups
            red = reducer(gid, fresh.amount[idx], fresh.customer_id[idx], fresh.is_fraud[idx])
            groups = len(red.gids)
            g_start = (red.gids // n_combo) * spec.slide_ms
            g_end = g_start + spec.window_ms
            stateful = g_end > new_wm
            if self.open:
                stateful |= np.isin(red.gids, self._open_gids(decode, n_combo))
            exact = ~stateful
            if exact.any():
                sel = np.flatnonzero(exact)
                counts = red.counts[sel]
                closed_parts.append(
                    self._rows(
                        red.gids[sel],
                        n_combo,
                        decode,
                        {
                            "events": counts,
                            "amount_sum": red.sums[sel],
                            "amount_mean": red.sums[sel] / counts,
                            "amount_m2": red.m2[sel],
                            "amount_std": _std(red.m2[sel], counts),
                            "amount_min": red.mins[sel],
                            "amount_max": red.maxs[sel],
                            "fraud_events": red.frauds[sel],
                            "amount_p95": red.p95[sel],
                            "p95_exact": np.ones(len(sel), bool),
                            "distinct_customers": red.distinct[sel],
                            "distinct_exact": np.ones(len(sel), bool),
                        },
                    )
                )
            for i in np.flatnonzero(stateful).tolist():
                key = (int(g_start[i]), decode[int(red.gids[i] % n_combo)])
                window = self.open.get(key)
                if window is None:
                    window = self.open[key] = OpenWindow(*key)
                lo, hi = red.starts[i], red.starts[i] + red.counts[i]
                window.merge(
                    int(red.counts[i]),
                    float(red.sums[i]),
                    float(red.m2[i]),
                    float(red.mins[i]),
                    float(red.maxs[i]),
                    int(red.frauds[i]),
                    red.amounts[lo:hi],
                    red.customers[red.customer_starts[i] : red.customer_starts[i + 1]],
                )
                dirty.add(key)
        closing = [k for k in self.open if k[0] + spec.window_ms <= new_wm]
        if closing:
            closed_parts.append(self._open_rows([self.open[k] for k in closing], final=True))
        still_open = [self.open[k] for k in dirty if k[0] + spec.window_ms > new_wm]
        self._commit(
            fresh,
            batch,
            tables,
            closed_parts,
            closing,
            dirty,
            still_open,
            new_max,
            late_events,
            skipped,
            backend,
            started,
        )
        for key in closing:
            del self.open[key]
        return {
            "events": len(fresh),
            "late": late_events,
            "skipped": skipped,
            "rejected": len(rejects),
            "groups": groups,
            "closed": sum(len(t) for t in closed_parts),
            "seconds": time.perf_counter() - started,
        }

    def _commit(
        self,
        fresh: EventBatch,
        batch: EventBatch,
        tables: dict,
        closed_parts: list,
        closing: list,
        dirty: set,
        still_open: list,
        new_max: int,
        late_events: int,
        skipped: int,
        backend: str,
        started: float,
    ) -> None:
        from flows.stream_arrow import strings, table

        last = batch.last_id()
        if last is None or last <= self.last_id:
            last = self.last_id
        db = self.db
        db.execute("BEGIN TRANSACTION")
        try:
            removed = [self._group_key(k) for k in set(closing) | dirty]
            if removed:
                db.register("removed_keys", table({"group_key": strings(removed)}))
                db.execute(
                    "DELETE FROM stream_open WHERE group_key IN "
                    "(SELECT group_key FROM removed_keys)"
                )
                db.unregister("removed_keys")
            if still_open:
                db.register("open_rows", self._open_rows(still_open, final=False))
                db.execute("INSERT INTO stream_open BY NAME SELECT * FROM open_rows")
                db.unregister("open_rows")
            for part in closed_parts:  # key columns differ in encoding: no concat
                db.register("closed_rows", part)
                db.execute("INSERT INTO stream_windows BY NAME SELECT * FROM closed_rows")
                db.unregister("closed_rows")
            if "late" in tables:
                db.register("late_rows", tables["late"])
                db.execute("INSERT INTO stream_late BY NAME SELECT * FROM late_rows")
                db.unregister("late_rows")
            if batch.rejects:
                db.executemany("INSERT INTO stream_rejects VALUES (?, ?)", batch.rejects)
            self.batches += 1
            db.execute(
                "UPDATE stream_progress SET last_hi = ?, last_lo = ?, max_ts = ?, "
                "events = events + ?, late_events = late_events + ?, rejected = rejected + ?, "
                "batches = batches + 1 WHERE id = 1",
                [last[0], last[1], new_max, len(fresh), late_events, len(batch.rejects)],
            )
            db.execute(
                "INSERT INTO stream_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, now())",
                [
                    self.batches,
                    backend,
                    len(fresh),
                    late_events,
                    skipped,
                    time.perf_counter() - started,
                    f"{last[0]}-{last[1]}",
                    new_max,
                ],
            )
            _maybe_crash("commit-before", self.batches)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self.batches -= 1
            raise
        self.last_id = last
        self.max_ts = new_max
        self.events += len(fresh)
        self.late_events += late_events
        self.rejected += len(batch.rejects)

    def _open_gids(self, decode: list[tuple[str, ...]], n_combo: int) -> np.ndarray:
        """The group ids, in this batch's key coding, of the windows still open."""
        codes: dict[tuple[str, ...], list[int]] = {}
        for code, key in enumerate(decode):
            codes.setdefault(key, []).append(code)
        slide = self.spec.slide_ms
        return np.array(
            [
                start // slide * n_combo + code
                for start, key in self.open
                for code in codes.get(key, ())
            ],
            dtype=np.int64,
        )

    def _group_key(self, key: tuple[int, tuple[str, ...]]) -> str:
        return "\x1f".join([str(key[0]), *key[1]])

    def _rows(
        self,
        gids: np.ndarray,
        n_combo: int,
        decode: list[tuple[str, ...]],
        columns: dict[str, np.ndarray],
    ) -> Any:
        """An Arrow table of per-group rows: window bounds, key strings, then ``columns``."""
        from flows.stream_arrow import dictionary, table

        start = (gids // n_combo) * self.spec.slide_ms
        data: dict[str, Any] = {
            "window_start_ms": start,
            "window_end_ms": start + self.spec.window_ms,
        }
        combos = gids % n_combo
        for position, name in enumerate(self.spec.keys):
            data[name] = dictionary(combos, [c[position] for c in decode])
        data.update(columns)
        return table(data)

    def _open_rows(self, windows: list[OpenWindow], final: bool) -> Any:
        """Rows for open windows (with sketches), or their final rows once closed."""
        from flows.stream_arrow import binaries, strings, table

        p95 = [w.p95() for w in windows]
        distinct = [w.distinct() for w in windows]
        n = np.array([w.events for w in windows], dtype=np.int64)
        m2 = np.array([w.m2 for w in windows], dtype=np.float64)
        start = np.array([w.window_start for w in windows], dtype=np.int64)
        data: dict[str, Any] = {
            "window_start_ms": start,
            "window_end_ms": start + self.spec.window_ms,
        }
        for position, name in enumerate(self.spec.keys):
            data[name] = strings([w.keys[position] for w in windows])
        data.update(
            {
                "events": n,
                "amount_sum": np.array([w.amount_sum for w in windows], dtype=np.float64),
                "amount_mean": np.array([w.mean for w in windows], dtype=np.float64),
                "amount_m2": m2,
                "amount_std": _std(m2, n).astype(np.float64),
                "amount_min": np.array([w.amount_min for w in windows], dtype=np.float64),
                "amount_max": np.array([w.amount_max for w in windows], dtype=np.float64),
                "fraud_events": np.array([w.fraud_events for w in windows], dtype=np.int64),
                "amount_p95": np.array([p[0] for p in p95], dtype=np.float64),
                "p95_exact": np.array([p[1] for p in p95], dtype=bool),
                "distinct_customers": np.array([d[0] for d in distinct], dtype=np.int64),
                "distinct_exact": np.array([d[1] for d in distinct], dtype=bool),
            }
        )
        if not final:
            data["group_key"] = strings(
                [self._group_key((w.window_start, w.keys)) for w in windows]
            )
            data["kll"] = binaries([w.kll.serialize() for w in windows])
            data["hll"] = binaries([w.hll.serialize_compact() for w in windows])
        return table(data)


def _maybe_crash(point: str, batch_no: int) -> None:
    """Fault drill: SIGKILL this process at a named point (``$HEADROOM_STREAM_CRASH``)."""
    wanted = os.environ.get(CRASH_ENV)
    if wanted and wanted == f"{point}:{batch_no}":
        log.warning("fault drill: SIGKILL at %s of batch %d", point, batch_no)
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# The micro-batch loop: the body of the budgeted task


@dataclass
class RunStats:
    """What one call of :func:`run_micro_batches` did (small and JSON-able)."""

    events: int = 0
    late: int = 0
    skipped: int = 0
    rejected: int = 0
    batches: int = 0
    seconds: float = 0.0
    batch_seconds: list[float] = field(default_factory=list)
    drained: bool = False
    lag: dict[str, Any] = field(default_factory=dict)
    backend: str = "cpu"
    last_id: str = ""
    max_batch: int = 0

    def as_dict(self) -> dict[str, Any]:
        seconds = sorted(self.batch_seconds)
        return {
            "events": self.events,
            "late": self.late,
            "skipped": self.skipped,
            "rejected": self.rejected,
            "batches": self.batches,
            "seconds": round(self.seconds, 4),
            "events_per_s": round(self.events / self.seconds, 1) if self.seconds else 0.0,
            "batch_s_p50": round(seconds[len(seconds) // 2], 4) if seconds else 0.0,
            "batch_s_max": round(seconds[-1], 4) if seconds else 0.0,
            "drained": self.drained,
            "lag": self.lag,
            "backend": self.backend,
            "last_id": self.last_id,
            "max_batch": self.max_batch,
        }


def run_micro_batches(
    source: str,
    sink: str,
    window_ms: int,
    slide_ms: int,
    watermark_ms: int,
    keys: list[str],
    max_batch: int,
    backend: str = "cpu",
    max_events: int | None = None,
    max_seconds: float = 60.0,
    idle_s: float = 1.0,
    cap_mb: float | None = None,
) -> dict[str, Any]:
    """Consume micro-batches of at most ``max_batch`` events into ``sink`` until a limit.

    ``cap_mb`` is the memory this call may use (headroom passes the task's cap).
    """
    from flows.stream_sources import open_source

    spec = WindowSpec(window_ms, slide_ms, watermark_ms, tuple(keys))
    reduce = None
    if backend == "gpu":
        from flows import stream_gpu

        reduce = stream_gpu.GpuReducer().reduce
    stats = RunStats(backend=backend, max_batch=max_batch)
    started = time.perf_counter()
    feed = open_source(source)
    # DuckDB gets a share of the cap; the batch arrays and sketches live outside it.
    state = StreamState(sink, spec, feed.name, memory_mb=(cap_mb * 0.4) if cap_mb else None)
    try:
        feed.start(after=state.last_id)
        while True:
            remaining_s = max_seconds - (time.perf_counter() - started)
            if remaining_s <= 0 or (max_events is not None and stats.events >= max_events):
                break
            want = max_batch if max_events is None else min(max_batch, max_events - stats.events)
            batch = feed.read(want, block_ms=int(min(idle_s, remaining_s) * 1000))
            if batch is None:
                stats.drained = True
                break
            _maybe_crash("after-read", state.batches + 1)
            result = state.apply(batch, backend=backend, reduce=reduce)
            _maybe_crash("after-commit", state.batches)
            feed.ack(batch)
            stats.events += result["events"]
            stats.late += result["late"]
            stats.skipped += result["skipped"]
            stats.rejected += result.get("rejected", 0)
            if result["events"] or result.get("rejected"):
                stats.batches += 1
                stats.batch_seconds.append(result["seconds"])
                log.info(
                    "committed batch %d: %d events, %d late, up to %s-%s",
                    state.batches,
                    result["events"],
                    result["late"],
                    *state.last_id,
                )
        stats.lag = feed.lag()
        stats.last_id = "{}-{}".format(*state.last_id)
    finally:
        state.close()
        feed.close()
    stats.seconds = time.perf_counter() - started
    return stats.as_dict()


# ---------------------------------------------------------------------------------------------
# Reading results, and the per-event baseline (the benchmark's subject and the tests' truth)


def read_windows(sink: str | os.PathLike[str]) -> Any:
    """Every (window, key) row of a sink as a pandas DataFrame, ordered."""
    import duckdb

    with duckdb.connect(os.fspath(sink), read_only=True) as db:
        return db.execute("SELECT * FROM window_stats ORDER BY ALL").df()


def baseline_aggregate(events: list[dict[str, Any]], spec: WindowSpec) -> dict[str, Any]:
    """Per-event Python aggregation (a dict per window and key), same semantics, exact.

    ``events`` in stream order, each with ts (ms), amount, customer_id, is_fraud and the keys.
    """
    groups: dict[tuple, dict[str, Any]] = {}
    late: dict[tuple, int] = {}
    max_seen = None
    copies = spec.per_event
    for e in events:
        ts = e["ts"]
        watermark = None if max_seen is None else max_seen - spec.watermark_ms
        first = ts - ts % spec.slide_ms
        key = tuple(e[k] for k in spec.keys)
        for j in range(copies):
            start = first - j * spec.slide_ms
            group = (start, key)
            if watermark is not None and start + spec.window_ms <= watermark:
                late[group] = late.get(group, 0) + 1
                continue
            g = groups.get(group)
            if g is None:
                g = groups[group] = {"amounts": [], "customers": set(), "fraud": 0}
            g["amounts"].append(e["amount"])
            g["customers"].add(e["customer_id"])
            g["fraud"] += bool(e["is_fraud"])
        max_seen = ts if max_seen is None else max(max_seen, ts)
    result = {}
    for group, g in groups.items():
        amounts = sorted(g["amounts"])
        n = len(amounts)
        mean = sum(amounts) / n
        m2 = sum((x - mean) ** 2 for x in amounts)
        result[group] = {
            "events": n,
            "amount_sum": sum(amounts),
            "amount_mean": mean,
            "amount_std": math.sqrt(m2 / (n - 1)) if n > 1 else float("nan"),
            "amount_min": amounts[0],
            "amount_max": amounts[-1],
            "fraud_events": g["fraud"],
            "amount_p95": amounts[math.ceil(P95 * n) - 1],
            "distinct_customers": len(g["customers"]),
            "amounts": amounts,
        }
    return {"windows": result, "late": late}


def compare_with_baseline(
    sink: str | os.PathLike[str], events: list[dict[str, Any]], spec: WindowSpec
) -> list[str]:
    """Every difference between a sink and the exact per-event baseline over ``events``.

    Counts, sums, min/max, fraud and late counts must be equal (sums and moments to 1e-9
    relative); p95 must be exact where the sink says so, else its true rank within
    KLL_RANK_ERROR of 0.95; distinct customers exact or within HLL_REL_ERROR.
    """
    truth = baseline_aggregate(events, spec)
    frame = read_windows(sink)
    problems: list[str] = []
    seen = set()
    for row in frame.to_dict("records"):
        group = (int(row["window_start_ms"]), tuple(row[k] for k in spec.keys))
        seen.add(group)
        name = f"window {group}"
        late = truth["late"].get(group, 0)
        if row["late_events"] != late:
            problems.append(f"{name}: late {row['late_events']} != {late}")
        expected = truth["windows"].get(group)
        if expected is None:
            if row["events"]:
                problems.append(f"{name}: {row['events']} events, expected none")
            continue
        for column in ("events", "fraud_events"):
            if row[column] != expected[column]:
                problems.append(f"{name}: {column} {row[column]} != {expected[column]}")
        for column in ("amount_sum", "amount_mean", "amount_min", "amount_max", "amount_std"):
            a, b = float(row[column]), float(expected[column])
            if not (
                math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
            ):
                problems.append(f"{name}: {column} {a} != {b}")
        amounts = np.asarray(expected["amounts"])
        p95 = float(row["amount_p95"])
        if row["p95_exact"]:
            if p95 != expected["amount_p95"]:
                problems.append(f"{name}: exact p95 {p95} != {expected['amount_p95']}")
        else:
            below, upto = (amounts < p95).mean(), (amounts <= p95).mean()
            if below > P95 + KLL_RANK_ERROR or upto < P95 - KLL_RANK_ERROR:
                problems.append(f"{name}: p95 {p95} has rank [{below}, {upto}]")
        distinct, true = int(row["distinct_customers"]), expected["distinct_customers"]
        if (
            distinct != true
            if row["distinct_exact"]
            else abs(distinct - true) > max(1.0, HLL_REL_ERROR * true)
        ):
            problems.append(f"{name}: distinct {distinct} vs {true}")
    for group in set(truth["windows"]) | set(truth["late"]):
        if group not in seen:
            problems.append(f"window {group}: missing from the sink")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command line: ``consume`` a source into a sink without Prefect (drills, debugging)."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m flows.stream_stats_core")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("consume", help="consume a source into a DuckDB sink")
    cmd.add_argument("source")
    cmd.add_argument("sink")
    cmd.add_argument("--window", default="1min")
    cmd.add_argument("--slide", default=None)
    cmd.add_argument("--watermark", default="5min")
    cmd.add_argument("--keys", default=",".join(KEY_FIELDS))
    cmd.add_argument("--max-batch", type=int, default=262_144)
    cmd.add_argument("--max-events", type=int, default=None)
    cmd.add_argument("--max-seconds", type=float, default=60.0)
    cmd.add_argument("--idle", type=float, default=1.0)
    cmd.add_argument("--backend", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    params = StreamParams(
        source=args.source,
        sink=args.sink,
        window=args.window,
        slide=args.slide,
        watermark=args.watermark,
        keys=[k for k in args.keys.split(",") if k],
    )
    spec = params.spec()
    with sink_lock(args.sink):
        result = run_micro_batches(
            args.source,
            args.sink,
            spec.window_ms,
            spec.slide_ms,
            spec.watermark_ms,
            list(spec.keys),
            args.max_batch,
            args.backend,
            args.max_events,
            args.max_seconds,
            args.idle,
        )
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
