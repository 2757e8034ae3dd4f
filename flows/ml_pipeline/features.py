"""Features for the fraud model, computed by DuckDB over the Parquet dataset in batches of whole
files (each batch reads 7 days of look-back before it), under a memory limit, thread count and
spill directory derived from the task's cap. No prefect here."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from flows.ml_pipeline.dataset import ordered_files, read_manifest
from flows.ml_pipeline.schema import FEATURES, HOUR_MS, LOOKBACK_MS, NIGHT_HOURS, to_ms
from headroom.errors import BadInput
from headroom.isolation.guard import current_cap_mb
from headroom.storage import open_storage, publishing
from headroom.units import duckdb_limit

log = logging.getLogger(__name__)


# The cap when a step runs outside a guarded child (a test, a notebook).
DEFAULT_CAP_MB = 1024.0


def step_cap_mb(cap_mb: float | None) -> float:
    """The cap given, else the guarded child's (set by headroom's guard), else the default."""
    return cap_mb or current_cap_mb() or DEFAULT_CAP_MB


def _duckdb_memory_mb(cap_mb: float) -> int:
    # DuckDB's limit covers its buffer pool, not Python, Arrow buffers or allocator slack.
    return max(64, int(cap_mb * 0.5))


def duckdb_threads(cap_mb: float) -> int:
    """Threads for DuckDB under ``cap_mb``: about 200 MiB of working memory per thread keeps
    window and sort operators from thrashing."""
    return max(1, min(os.cpu_count() or 1, int(_duckdb_memory_mb(cap_mb) // 200) or 1))


def features_complete(features_dir: str | Path) -> bool:
    """Whether ``features_dir`` holds a whole feature table (its summary is written last)."""
    return Path(features_dir, "_features.json").is_file()


def duckdb_settings(cap_mb: float, temp_dir: str) -> dict[str, Any]:
    """DuckDB memory_limit, threads and spill directory for a process capped at ``cap_mb``."""
    return {
        "memory_limit": duckdb_limit(_duckdb_memory_mb(cap_mb)),
        "threads": duckdb_threads(cap_mb),
        "temp_directory": temp_dir,
        "preserve_insertion_order": False,
    }


def connect_duckdb(cap_mb: float, temp_dir: str, database: str = ":memory:") -> Any:
    """A DuckDB connection configured for a cap."""
    import duckdb

    os.makedirs(temp_dir, exist_ok=True)
    con = duckdb.connect(database)
    for name, value in duckdb_settings(cap_mb, temp_dir).items():
        con.execute(f"SET {name} = ?", [value])
    return con


def file_batches(files: list[dict[str, Any]], rows_per_batch: int) -> list[list[dict[str, Any]]]:
    """Consecutive whole files grouped until a batch holds at least ``rows_per_batch`` rows."""
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    rows = 0
    for entry in files:
        current.append(entry)
        rows += int(entry["rows"])
        if rows >= rows_per_batch:
            batches.append(current)
            current, rows = [], 0
    if current:
        batches.append(current)
    return batches


_WINDOWS = """
    c1h AS (PARTITION BY customer_id ORDER BY t RANGE BETWEEN 3600000 PRECEDING AND CURRENT ROW),
    c24h AS (PARTITION BY customer_id ORDER BY t RANGE BETWEEN 86400000 PRECEDING AND CURRENT ROW),
    c7d AS (PARTITION BY customer_id ORDER BY t RANGE BETWEEN 604800000 PRECEDING AND CURRENT ROW),
    c7d_prior AS (PARTITION BY customer_id ORDER BY t
                  RANGE BETWEEN 604800000 PRECEDING AND CURRENT ROW EXCLUDE CURRENT ROW),
    d1h AS (PARTITION BY device_id ORDER BY t RANGE BETWEEN 3600000 PRECEDING AND CURRENT ROW),
    d24h AS (PARTITION BY device_id ORDER BY t RANGE BETWEEN 86400000 PRECEDING AND CURRENT ROW),
    d7d AS (PARTITION BY device_id ORDER BY t RANGE BETWEEN 604800000 PRECEDING AND CURRENT ROW),
    c_seq AS (PARTITION BY customer_id ORDER BY t, transaction_id),
    d_seq AS (PARTITION BY device_id ORDER BY t, transaction_id)
"""


def _batch_sql() -> str:
    """One batch's features: windows over the batch's files plus 7 days of look-back.

    Parameters: ``$sources`` (files read), ``$members`` (files whose rows are kept) and
    ``$lower`` (first epoch ms read)."""
    return f"""
    WITH src AS (
        SELECT transaction_id, epoch_ms(ts) AS t, customer_id, device_id,
               CAST(merchant_category AS VARCHAR) AS merchant_category,
               CAST(channel AS VARCHAR) AS channel, amount, latitude, longitude, is_fraud,
               CAST(fraud_scenario AS VARCHAR) AS fraud_scenario, filename
        FROM read_parquet($sources, filename = true)
        WHERE epoch_ms(ts) >= $lower
    ), windowed AS (
        SELECT *,
            count(*) OVER c1h AS cust_tx_1h, count(*) OVER c24h AS cust_tx_24h,
            count(*) OVER c7d AS cust_tx_7d,
            sum(amount) OVER c1h AS cust_amount_1h, sum(amount) OVER c24h AS cust_amount_24h,
            sum(amount) OVER c7d AS cust_amount_7d,
            avg(amount) OVER c7d_prior AS cust_avg_prior,
            stddev_samp(amount) OVER c7d_prior AS cust_std_prior,
            count(*) OVER d1h AS dev_tx_1h, count(*) OVER d24h AS dev_tx_24h,
            count(*) OVER d7d AS dev_tx_7d,
            sum(amount) OVER d1h AS dev_amount_1h, sum(amount) OVER d24h AS dev_amount_24h,
            sum(amount) OVER d7d AS dev_amount_7d,
            t - lag(t) OVER c_seq AS cust_gap_ms, t - lag(t) OVER d_seq AS dev_gap_ms,
            lag(latitude) OVER c_seq AS prev_lat, lag(longitude) OVER c_seq AS prev_lon
        FROM src
        WINDOW {_WINDOWS}
    )
    SELECT w.transaction_id, w.t AS ts_ms, w.customer_id, w.device_id,
        w.is_fraud, w.fraud_scenario,
        w.amount, ln(1 + greatest(w.amount, 0)) AS log_amount,
        CAST((w.t // {HOUR_MS}) % 24 AS INTEGER) AS hour_of_day,
        CAST(((w.t // {HOUR_MS}) % 24) >= {NIGHT_HOURS[0]}
             AND ((w.t // {HOUR_MS}) % 24) < {NIGHT_HOURS[1]} AS INTEGER) AS is_night,
        w.cust_tx_1h, w.cust_tx_24h, w.cust_tx_7d,
        w.cust_amount_1h, w.cust_amount_24h, w.cust_amount_7d,
        w.dev_tx_1h, w.dev_tx_24h, w.dev_tx_7d,
        w.dev_amount_1h, w.dev_amount_24h, w.dev_amount_7d,
        -- Gaps are capped at the look-back: a batch cannot see further back than that.
        least(coalesce(w.cust_gap_ms, {LOOKBACK_MS}), {LOOKBACK_MS}) / 1000.0
            AS secs_since_cust_prev,
        least(coalesce(w.dev_gap_ms, {LOOKBACK_MS}), {LOOKBACK_MS}) / 1000.0
            AS secs_since_dev_prev,
        -- A device is new on the customer's first use of it, once the customer has history.
        CAST(w.t = fs.first_t AND w.t > fc.first_t AS INTEGER) AS new_device,
        w.amount / nullif(w.cust_avg_prior, 0) AS amount_vs_usual,
        (w.amount - w.cust_avg_prior) / nullif(w.cust_std_prior, 0) AS amount_zscore,
        CASE WHEN w.cust_gap_ms <= {LOOKBACK_MS} THEN 111.2 * sqrt(pow(w.latitude - w.prev_lat, 2)
            + pow(cos(radians(w.latitude)) * (w.longitude - w.prev_lon), 2)) END AS km_from_prev,
        111.2 * sqrt(pow(w.latitude - h.home_latitude, 2)
            + pow(cos(radians(w.latitude)) * (w.longitude - h.home_longitude), 2)) AS km_from_home,
        w.channel, w.merchant_category
    FROM windowed w
    JOIN first_seen fs ON fs.customer_id = w.customer_id AND fs.device_id = w.device_id
    JOIN first_customer fc ON fc.customer_id = w.customer_id
    LEFT JOIN homes h ON h.customer_id = w.customer_id
    WHERE list_contains($members, w.filename)
    """


def build_features(
    dataset_dir: str,
    features_dir: str,
    rows_per_batch: int = 2_000_000,
    cap_mb: float | None = None,
) -> dict[str, Any]:
    """Compute the feature table of a local dataset into ``features_dir`` (Parquet parts plus
    ``_features.json``), batch by batch, published as a whole directory."""
    started = time.monotonic()
    cap = step_cap_mb(cap_mb)
    root = Path(dataset_dir)
    files = ordered_files(read_manifest(str(root)))
    paths = {f["path"]: str((root / f["path"]).resolve()) for f in files}
    final = Path(features_dir)
    # Old features step aside before the new ones take the name: nothing ever finds a
    # half-written set under it, only a complete one or, between the two renames, none,
    # which the step's output check treats as "not built yet".
    with publishing(final, directory=True) as building:
        rows, parts = _write_parts(building, root, files, paths, rows_per_batch, cap)
        summary = {
            "features_dir": str(final),
            "rows": rows,
            "parts": parts,
            "features": list(FEATURES),
            "rows_per_batch": rows_per_batch,
            "seconds": round(time.monotonic() - started, 2),
        }
        open_storage(building).write_json("_features.json", summary)
    return summary


def _write_parts(
    building: Path,
    root: Path,
    files: list[dict[str, Any]],
    paths: dict[str, str],
    rows_per_batch: int,
    cap: float,
) -> tuple[int, int]:
    """Write the feature parts into ``building``, batch by batch; (rows, parts)."""
    scratch = building / ".duckdb"
    con = connect_duckdb(cap, str(scratch / "spill"), str(scratch / "work.duckdb"))
    try:
        everything = {"files": list(paths.values())}
        # First use of each (customer, device) and each customer's first transaction: small
        # aggregates over the whole dataset, so a batch knows what came before its look-back.
        con.execute(
            """CREATE TABLE first_seen AS SELECT customer_id, device_id, min(epoch_ms(ts))
            AS first_t FROM read_parquet($files) GROUP BY customer_id, device_id""",
            everything,
        )
        con.execute(
            """CREATE TABLE first_customer AS SELECT customer_id, min(epoch_ms(ts)) AS first_t
            FROM read_parquet($files) GROUP BY customer_id""",
            everything,
        )
        # Home locations are optional (customers.parquet): without them km_from_home is missing.
        customers = root / "customers.parquet"
        if customers.exists():
            con.execute(
                "CREATE TABLE homes AS SELECT customer_id, home_latitude, home_longitude "
                "FROM read_parquet(?)",
                [str(customers)],
            )
        else:
            con.execute(
                "CREATE TABLE homes (customer_id BIGINT, home_latitude FLOAT, home_longitude FLOAT)"
            )
        rows = 0
        batches = file_batches(files, max(1, rows_per_batch))
        for number, batch in enumerate(batches):
            lower = to_ms(batch[0]["min_ts"]) - LOOKBACK_MS if batch[0].get("min_ts") else 0
            sources = [
                paths[f["path"]]
                for f in files
                if int(f.get("index", 0)) <= int(batch[-1].get("index", 0))
                and (not f.get("max_ts") or to_ms(f["max_ts"]) >= lower)
            ]
            members = [paths[f["path"]] for f in batch]
            part = building / f"part-{number:05d}.parquet"
            con.execute(
                f"COPY ({_batch_sql()} ORDER BY ts_ms, transaction_id) "
                "TO $part (FORMAT parquet, ROW_GROUP_SIZE 100000)",
                {"sources": sources, "members": members, "lower": lower, "part": str(part)},
            )
            counted = con.execute("SELECT count(*) FROM read_parquet(?)", [str(part)])
            batch_rows = counted.fetchall()[0][0]
            expected = sum(int(f["rows"]) for f in batch)
            if batch_rows != expected:
                raise BadInput(
                    f"features batch {number} ({batch[0]['path']} .. {batch[-1]['path']}): "
                    f"{batch_rows} rows, the manifest lists {expected}"
                )
            rows += batch_rows
            log.info("features batch %d/%d: %d rows", number + 1, len(batches), batch_rows)
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return rows, len(batches)


def build_features_task(
    dataset_dir: str, features_dir: str, fingerprint: str, rows_per_batch: int = 2_000_000
) -> dict[str, Any]:
    """:func:`build_features` under the cap of the guarded child (fingerprint: cache key)."""
    return build_features(dataset_dir, features_dir, rows_per_batch)


# ---------------------------------------------------------------------------------------------
