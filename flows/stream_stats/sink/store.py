"""The DuckDB sink of stream_stats: open windows in memory, each batch committed atomically.

Pure logic without prefect. Every micro-batch's window updates, the last applied stream ID
and the watermark are committed in one DuckDB transaction; entries at or below that ID are
skipped when delivered again. One consumer per sink, held by a file lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flows.stream_stats.compute.reduce import assign_windows, reduce_groups, watermark_before
from flows.stream_stats.compute.sketches import OpenWindow, _std
from flows.stream_stats.sink.schema import _schema
from flows.stream_stats.windows import NO_TS, WindowSpec
from headroom.errors import BadInput, TerminalError
from headroom.units import duckdb_limit

if TYPE_CHECKING:
    from flows.stream_stats.events import EventBatch

log = logging.getLogger(__name__)


CRASH_ENV = "HEADROOM_STREAM_CRASH"  # fault drill: "after-read:N" or "after-commit:N"


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


@dataclass
class _Change:
    """What one micro-batch changes in the sink, committed in one transaction."""

    fresh: EventBatch  # the batch's events not applied before
    batch: EventBatch
    skipped: int
    backend: str
    started: float
    new_max: int = NO_TS
    new_wm: int = NO_TS
    late_events: int = 0
    groups: int = 0
    late: Any = None  # rows of stream_late, or None
    closed_parts: list[Any] = field(default_factory=list)
    dirty: set[tuple[int, tuple[str, ...]]] = field(default_factory=set)
    closing: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    still_open: list[OpenWindow] = field(default_factory=list)


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
            self.db.execute("SET memory_limit = ?", [duckdb_limit(memory_mb)])
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
        # Partitioned sources: {partition: next offset}, committed with the windows.
        self.offsets: dict[int, int] = dict(
            self.db.execute("SELECT source_partition, next_offset FROM stream_offsets").fetchall()
        )
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
        started = time.perf_counter()
        fresh = (
            batch.after(self.last_id)
            if batch.offsets is None
            else batch.after_offsets(self.offsets)
        )
        skipped = len(batch) - len(fresh)
        if len(fresh) == 0 and not batch.rejects:
            return {"events": 0, "late": 0, "skipped": skipped, "seconds": 0.0, "groups": 0}
        change = _Change(fresh, batch, skipped, backend, started)
        self._fold(change, reduce)
        window_ms = self.spec.window_ms
        change.closing = [k for k in self.open if k[0] + window_ms <= change.new_wm]
        if change.closing:
            closed = [self.open[k] for k in change.closing]
            change.closed_parts.append(self._open_rows(closed, final=True))
        change.still_open = [self.open[k] for k in change.dirty if k[0] + window_ms > change.new_wm]
        self._commit(change)
        for key in change.closing:
            del self.open[key]
        return {
            "events": len(fresh),
            "late": change.late_events,
            "skipped": skipped,
            "rejected": len(batch.rejects),
            "groups": change.groups,
            "closed": sum(len(t) for t in change.closed_parts),
            "seconds": time.perf_counter() - started,
        }

    def _fold(self, change: _Change, reduce: Any) -> None:
        """Assign the fresh events to windows: late ones counted, the others reduced per
        (window, key) group and folded into ``change``."""
        spec = self.spec
        fresh = change.fresh
        ts = fresh.ts
        wm = watermark_before(ts, self.max_ts, spec.watermark_ms)
        event, starts = assign_windows(ts, spec)
        accepted = starts + spec.window_ms > wm[event]
        combo, decode = fresh.key_combos(spec.keys)
        n_combo = max(1, len(decode))
        late_mask = ~accepted
        change.late_events = int(np.unique(event[late_mask]).size) if late_mask.any() else 0
        change.new_max = max(self.max_ts, int(ts.max())) if len(ts) else self.max_ts
        change.new_wm = NO_TS if change.new_max == NO_TS else change.new_max - spec.watermark_ms
        if late_mask.any():
            late_gid = (starts[late_mask] // spec.slide_ms) * n_combo + combo[event[late_mask]]
            ids, counts = np.unique(late_gid, return_counts=True)
            change.late = self._rows(ids, n_combo, decode, {"late_events": counts})
        if accepted.any():
            idx = event[accepted]
            gid = (starts[accepted] // spec.slide_ms) * n_combo + combo[idx]
            reducer = reduce or reduce_groups
            red = reducer(gid, fresh.amount[idx], fresh.customer_id[idx], fresh.is_fraud[idx])
            change.groups = len(red.gids)
            self._fold_groups(change, red, decode, n_combo)

    def _fold_groups(
        self, change: _Change, red: Any, decode: list[tuple[str, ...]], n_combo: int
    ) -> None:
        """Groups whose window is closed and was never open become final rows at once; the
        others merge into their open window (marked dirty)."""
        spec = self.spec
        g_start = (red.gids // n_combo) * spec.slide_ms
        stateful = g_start + spec.window_ms > change.new_wm
        if self.open:
            stateful |= np.isin(red.gids, self._open_gids(decode, n_combo))
        exact = np.flatnonzero(~stateful)
        if exact.size:
            change.closed_parts.append(self._exact_rows(red, exact, n_combo, decode))
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
            change.dirty.add(key)

    def _exact_rows(
        self, red: Any, sel: np.ndarray, n_combo: int, decode: list[tuple[str, ...]]
    ) -> Any:
        """Final rows of the groups ``sel``, exact: every event of their window is here."""
        counts = red.counts[sel]
        return self._rows(
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

    def _commit(self, change: _Change) -> None:
        """Write ``change`` and the new stream position in one transaction, then take them."""
        batch = change.batch
        last = batch.last_id() if batch.offsets is None else self.last_id
        if last is None or last <= self.last_id:
            last = self.last_id
        db = self.db
        db.execute("BEGIN TRANSACTION")
        try:
            self._write_windows(change)
            if batch.rejects:
                db.executemany("INSERT INTO stream_rejects VALUES (?, ?)", batch.rejects)
            if batch.offsets:
                db.executemany(
                    "INSERT OR REPLACE INTO stream_offsets VALUES (?, ?)",
                    sorted(batch.offsets.items()),
                )
            self.batches += 1
            self._write_progress(change, last)
            _maybe_crash("commit-before", self.batches)
            db.execute("COMMIT")
        except BaseException:
            self.batches -= 1
            _rollback(db)
            raise
        self.last_id = last
        self.offsets.update(batch.offsets or {})
        self.max_ts = change.new_max
        self.events += len(change.fresh)
        self.late_events += change.late_events
        self.rejected += len(batch.rejects)

    def _write_windows(self, change: _Change) -> None:
        """Replace the changed open windows, append the closed and the late rows."""
        from flows.common.arrow import strings, table

        db = self.db
        removed = [self._group_key(k) for k in set(change.closing) | change.dirty]
        if removed:
            db.register("removed_keys", table({"group_key": strings(removed)}))
            db.execute(
                "DELETE FROM stream_open WHERE group_key IN (SELECT group_key FROM removed_keys)"
            )
            db.unregister("removed_keys")
        if change.still_open:
            db.register("open_rows", self._open_rows(change.still_open, final=False))
            db.execute("INSERT INTO stream_open BY NAME SELECT * FROM open_rows")
            db.unregister("open_rows")
        for part in change.closed_parts:  # key columns differ in encoding: no concat
            db.register("closed_rows", part)
            db.execute("INSERT INTO stream_windows BY NAME SELECT * FROM closed_rows")
            db.unregister("closed_rows")
        if change.late is not None:
            db.register("late_rows", change.late)
            db.execute("INSERT INTO stream_late BY NAME SELECT * FROM late_rows")
            db.unregister("late_rows")

    def _write_progress(self, change: _Change, last: tuple[int, int]) -> None:
        """The stream position and totals, and this batch's line in stream_batches."""
        self.db.execute(
            "UPDATE stream_progress SET last_hi = ?, last_lo = ?, max_ts = ?, "
            "events = events + ?, late_events = late_events + ?, rejected = rejected + ?, "
            "batches = batches + 1 WHERE id = 1",
            [
                last[0],
                last[1],
                change.new_max,
                len(change.fresh),
                change.late_events,
                len(change.batch.rejects),
            ],
        )
        self.db.execute(
            "INSERT INTO stream_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, now())",
            [
                self.batches,
                change.backend,
                len(change.fresh),
                change.late_events,
                change.skipped,
                time.perf_counter() - change.started,
                f"{last[0]}-{last[1]}",
                change.new_max,
            ],
        )

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
        from flows.common.arrow import dictionary, table

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
        from flows.common.arrow import binaries, strings, table

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


def _rollback(db: Any) -> None:
    """Roll back after a failure, keeping that failure the one raised: a COMMIT that failed
    (a full disk writing the WAL) may have ended the transaction, and ROLLBACK's own error
    ("no transaction is active") would hide why."""
    import duckdb

    try:
        db.execute("ROLLBACK")
    except duckdb.Error as exc:
        log.debug("rollback after a failure: %s", exc)


def _maybe_crash(point: str, batch_no: int) -> None:
    """Fault drill: SIGKILL this process at a named point (``$HEADROOM_STREAM_CRASH``)."""
    wanted = os.environ.get(CRASH_ENV)
    if wanted and wanted == f"{point}:{batch_no}":
        log.warning("fault drill: SIGKILL at %s of batch %d", point, batch_no)
        os.kill(os.getpid(), signal.SIGKILL)
