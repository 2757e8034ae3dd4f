"""The tables and the ``window_stats`` view of a stream_stats DuckDB sink."""

from __future__ import annotations


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
        "CREATE TABLE IF NOT EXISTS stream_offsets (source_partition INTEGER PRIMARY KEY, "
        "next_offset BIGINT)",
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
