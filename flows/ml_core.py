"""Pure logic of the fraud-model pipeline: fingerprint, health check, features, train, evaluate,
register. No prefect here: guarded children import this module and start fast.

Every step reads files and writes files, and returns a small JSON-able record (paths, counts,
metrics): the data never travels through the orchestrator. Features are computed by DuckDB over
the Parquet dataset in batches of whole files (each batch reads 7 days of look-back before it),
under a memory limit, thread count and spill directory derived from the task's cap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from headroom.errors import BadInput
from headroom.units import duckdb_limit

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Bump when a step's output changes meaning: it is part of every cache key.
PIPELINE_VERSION = "ml-1"
SCENARIOS = ("amount_outlier", "compromised_device", "account_takeover", "card_testing")
LOOKBACK_MS = 7 * 86_400_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
NIGHT_HOURS = (0, 6)  # UTC hours [0, 6): night-time flag
MIN_TRAIN_FRAUD = 20
MODEL_NAME = "fraud-model"

# Transaction columns the pipeline needs, with the Arrow type families it accepts.
TRANSACTION_COLUMNS: dict[str, str] = {
    "transaction_id": "int64",
    "ts": "timestamp",
    "customer_id": "int64",
    "device_id": "int64",
    "merchant_id": "int64",
    "merchant_category": "string",
    "channel": "string",
    "amount": "float",
    "latitude": "float",
    "longitude": "float",
    "is_fraud": "bool",
    "fraud_scenario": "string",
}
CATEGORICAL = ("channel", "merchant_category")
NUMERIC_FEATURES = (
    "amount",
    "log_amount",
    "hour_of_day",
    "is_night",
    "cust_tx_1h",
    "cust_tx_24h",
    "cust_tx_7d",
    "cust_amount_1h",
    "cust_amount_24h",
    "cust_amount_7d",
    "dev_tx_1h",
    "dev_tx_24h",
    "dev_tx_7d",
    "dev_amount_1h",
    "dev_amount_24h",
    "dev_amount_7d",
    "secs_since_cust_prev",
    "secs_since_dev_prev",
    "new_device",
    "amount_vs_usual",
    "amount_zscore",
    "km_from_prev",
    "km_from_home",
)
FEATURES = (*NUMERIC_FEATURES, *CATEGORICAL)
LABEL_COLUMNS = ("transaction_id", "ts_ms", "is_fraud", "fraud_scenario")


class TrainParams(BaseModel):
    """Parameters of train_fraud_model, validated before any work starts."""

    dataset: str = Field(min_length=1, description="fraud_synth dataset: directory or s3:// URL")
    out: str = Field("data/models", min_length=1, description="model registry: dir or s3:// URL")
    train_end: datetime | None = Field(None, description="train on transactions before this")
    test_start: datetime | None = Field(None, description="evaluate on transactions from this")
    train_fraction: float = Field(
        0.7, gt=0.05, lt=0.95, description="split at this fraction of the time range (no dates)"
    )
    # 0.1 over-fitted the rare scenarios here (card testing ranked below genuine rows).
    learning_rate: float = Field(0.05, gt=0, le=1)
    max_iter: int = Field(150, ge=1, le=5000, description="boosting iterations")
    max_leaf_nodes: int = Field(31, ge=2, le=4096)
    min_samples_leaf: int = Field(5, ge=1, le=100_000)
    l2_regularization: float = Field(0.0, ge=0)
    alert_rate: float = Field(0.01, gt=0, lt=0.5, description="share of transactions alerted")
    min_fraud_rows: int = Field(50, ge=1, description="health check: fraud rows the data needs")
    seed: int = Field(0, ge=0, description="sampling and model seed")
    workdir: str | None = Field(None, description="local scratch for features and model files")
    chunk_scale: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _split_in_order(self) -> TrainParams:
        if self.train_end and self.test_start and self.test_start < self.train_end:
            raise ValueError(
                f"test_start ({self.test_start}) must not be before train_end ({self.train_end})"
            )
        for name in ("train_end", "test_start"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                setattr(self, name, value.replace(tzinfo=UTC))
        return self

    def model_params(self) -> dict[str, Any]:
        """The HistGradientBoosting parameters."""
        return {
            "learning_rate": self.learning_rate,
            "max_iter": self.max_iter,
            "max_leaf_nodes": self.max_leaf_nodes,
            "min_samples_leaf": self.min_samples_leaf,
            "l2_regularization": self.l2_regularization,
        }

    def local_workdir(self) -> Path:
        """Where intermediate files go: ``workdir``, else ``<out>/_work`` or the state dir."""
        if self.workdir:
            return Path(self.workdir).resolve()
        if "://" not in self.out or self.out.startswith("file://"):
            return Path(self.out.removeprefix("file://")).resolve() / "_work"
        from headroom.history import state_dir

        return Path(state_dir()) / "ml-work"


# ---------------------------------------------------------------------------------------------
# Manifest, fingerprint, health check


def to_ms(value: Any) -> int:
    """Milliseconds since the epoch (UTC) of an ISO string, datetime or number of ms."""
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(round(moment.timestamp() * 1000))
    text = str(value).strip().replace("Z", "+00:00")
    return to_ms(datetime.fromisoformat(text))


def iso(ms: int) -> str:
    """An ISO-8601 UTC string for milliseconds since the epoch."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_manifest(dataset: str) -> dict[str, Any]:
    """The dataset's manifest.json, or BadInput naming what is missing."""
    from headroom.storage import open_storage

    if "://" not in dataset and not os.path.isdir(dataset):
        raise BadInput(f"dataset: {dataset!r} is not a directory")
    storage = open_storage(dataset)
    manifest = storage.read_json("manifest.json")
    if manifest is None:
        raise BadInput(f"dataset {dataset}: manifest.json is missing (not a fraud_synth output?)")
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise BadInput(f"dataset {dataset}: manifest.json lists no transaction files")
    for position, entry in enumerate(files):
        missing = [k for k in ("path", "rows", "bytes", "checksum") if k not in entry]
        if missing:
            raise BadInput(
                f"dataset {dataset}: manifest.json files[{position}] lacks {', '.join(missing)}"
            )
        storage.path(str(entry["path"]))  # refuses a path that leaves the dataset
    return manifest


def ordered_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's file entries in index order (= event-time order)."""
    return sorted(manifest["files"], key=lambda f: (f.get("index", 0), f["path"]))


def dataset_fingerprint(manifest: dict[str, Any]) -> str:
    """A hash of the dataset's content as the manifest records it: names, sizes, checksums."""
    entries = [
        [f["path"], int(f["rows"]), int(f["bytes"]), str(f["checksum"])]
        for f in ordered_files(manifest)
    ]
    document = {"schema_version": manifest.get("schema_version"), "files": entries}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def _type_family(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        return _type_family(arrow_type.value_type)
    if pa.types.is_int64(arrow_type):
        return "int64"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    return str(arrow_type)


def schema_problems(schema: Any, where: str) -> list[str]:
    """What is missing or mistyped in one transaction file's Arrow schema."""
    problems = []
    names = set(schema.names)
    for column, family in TRANSACTION_COLUMNS.items():
        if column not in names:
            problems.append(f"{where}: column {column!r} is missing")
            continue
        found = _type_family(schema.field(column).type)
        if found != family:
            problems.append(
                f"{where}: column {column!r} is {schema.field(column).type}, expected {family}"
            )
    return problems


def check_dataset(dataset: str, min_fraud_rows: int = 50) -> dict[str, Any]:
    """Health check: manifest, every listed file present at its size with the expected schema,
    enough fraud rows. Returns a small report with the fingerprint, or one BadInput naming every
    problem."""
    import pyarrow.parquet as pq

    from headroom.storage import open_storage

    manifest = read_manifest(dataset)
    storage = open_storage(dataset)
    problems: list[str] = []
    for entry in ordered_files(manifest):
        size = storage.size(entry["path"])
        if size is None:
            problems.append(f"{entry['path']}: listed in manifest.json but missing")
            continue
        if size != int(entry["bytes"]):
            problems.append(f"{entry['path']}: {size} bytes, manifest.json says {entry['bytes']}")
            continue
        try:
            schema = pq.read_schema(storage.path(entry["path"]), filesystem=storage.filesystem)
        except Exception as exc:  # an unreadable footer is a problem of that file
            problems.append(f"{entry['path']}: not readable as Parquet ({exc})")
            continue
        problems += schema_problems(schema, entry["path"])
    fraud_by_scenario: dict[str, int] = {}
    for entry in manifest["files"]:
        for scenario, count in (entry.get("fraud") or {}).items():
            fraud_by_scenario[scenario] = fraud_by_scenario.get(scenario, 0) + int(count)
    fraud_rows = sum(fraud_by_scenario.values())
    if fraud_rows < min_fraud_rows:
        problems.append(
            f"only {fraud_rows} fraud rows in the dataset, min_fraud_rows={min_fraud_rows} needed"
        )
    if problems:
        raise BadInput(
            f"dataset {dataset} failed its health check ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
        )
    files = ordered_files(manifest)
    rows = sum(int(f["rows"]) for f in files)
    min_ts = [to_ms(f["min_ts"]) for f in files if f.get("min_ts") is not None]
    max_ts = [to_ms(f["max_ts"]) for f in files if f.get("max_ts") is not None]
    return {
        "dataset": dataset,
        "fingerprint": dataset_fingerprint(manifest),
        "files": len(files),
        "rows": rows,
        "bytes": sum(int(f["bytes"]) for f in files),
        "fraud_rows": fraud_rows,
        "fraud_by_scenario": dict(sorted(fraud_by_scenario.items())),
        "min_ts_ms": min(min_ts) if min_ts else to_ms(manifest["start"]),
        "max_ts_ms": max(max_ts) if max_ts else to_ms(manifest["end"]),
        "seed": manifest.get("seed"),
    }


def resolve_split(params: TrainParams, min_ts_ms: int, max_ts_ms: int) -> tuple[int, int]:
    """(train_end, test_start) in ms: the given dates, else ``train_fraction`` of the range."""
    if params.train_end is None and params.test_start is None:
        cut = min_ts_ms + int((max_ts_ms - min_ts_ms) * params.train_fraction)
        return cut, cut
    train_end = to_ms(params.train_end or params.test_start)
    test_start = to_ms(params.test_start or params.train_end)
    for name, value in (("train_end", train_end), ("test_start", test_start)):
        if not min_ts_ms < value <= max_ts_ms:
            raise BadInput(
                f"{name}={iso(value)} is outside the dataset's time range "
                f"{iso(min_ts_ms)} .. {iso(max_ts_ms)}"
            )
    return train_end, test_start


def stage_dataset(dataset: str, fingerprint: str, cache_root: str) -> str:
    """A local directory holding the dataset: itself when local, else a verified copy of the
    files its manifest lists (S3), streamed to ``cache_root/<fingerprint>``."""
    from headroom.storage import open_storage

    if "://" not in dataset or dataset.startswith("file://"):
        return str(Path(dataset.removeprefix("file://")).resolve())
    storage = open_storage(dataset)
    manifest = read_manifest(dataset)
    target = Path(cache_root) / f"dataset-{fingerprint[:16]}"
    for entry in ordered_files(manifest):
        local = target / entry["path"]
        if local.exists() and local.stat().st_size == int(entry["bytes"]):
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        temporary = local.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{local.name}")
        with storage.filesystem.open_input_stream(storage.path(entry["path"])) as source:
            with open(temporary, "wb") as sink:
                while block := source.read(8 << 20):
                    sink.write(block)
        os.replace(temporary, local)
    _write_json_atomic(target / "manifest.json", manifest)
    return str(target)


# ---------------------------------------------------------------------------------------------
# Features


def guard_cap_mb(default: float = 1024.0) -> float:
    """The cap of the guarded child this runs in ($HEADROOM_CAP_MB, set by headroom's guard)."""
    try:
        return float(os.environ["HEADROOM_CAP_MB"])
    except (KeyError, ValueError):
        return default


def duckdb_settings(cap_mb: float, temp_dir: str) -> dict[str, Any]:
    """DuckDB memory_limit, threads and spill directory for a process capped at ``cap_mb``."""
    # DuckDB's limit covers its buffer pool, not Python, Arrow buffers or allocator slack.
    memory_mb = max(64, int(cap_mb * 0.5))
    # About 200 MiB of working memory per thread keeps window and sort operators from thrashing.
    threads = max(1, min(os.cpu_count() or 1, int(memory_mb // 200) or 1))
    return {
        "memory_limit": duckdb_limit(memory_mb),
        "threads": threads,
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


def _sql_path(path: str | Path) -> str:
    return str(path).replace("'", "''")


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join(f"'{_sql_path(p)}'" for p in paths) + "]"


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


def _batch_sql(sources: list[str], members: list[str], lower_ms: int) -> str:
    """One batch's features: windows over the batch's files plus 7 days of look-back."""
    return f"""
    WITH src AS (
        SELECT transaction_id, epoch_ms(ts) AS t, customer_id, device_id,
               CAST(merchant_category AS VARCHAR) AS merchant_category,
               CAST(channel AS VARCHAR) AS channel, amount, latitude, longitude, is_fraud,
               CAST(fraud_scenario AS VARCHAR) AS fraud_scenario, filename
        FROM read_parquet({_sql_list(sources)}, filename = true)
        WHERE epoch_ms(ts) >= {lower_ms}
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
    WHERE w.filename IN {_sql_list(members).replace("[", "(").replace("]", ")")}
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
    cap = cap_mb or guard_cap_mb()
    root = Path(dataset_dir)
    files = ordered_files(read_manifest(str(root)))
    paths = {f["path"]: str((root / f["path"]).resolve()) for f in files}
    final = Path(features_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    building = final.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{final.name}")
    building.mkdir()
    scratch = building / ".duckdb"
    con = connect_duckdb(cap, str(scratch / "spill"), str(scratch / "work.duckdb"))
    try:
        everything = _sql_list(list(paths.values()))
        # First use of each (customer, device) and each customer's first transaction: small
        # aggregates over the whole dataset, so a batch knows what came before its look-back.
        con.execute(
            f"""CREATE TABLE first_seen AS SELECT customer_id, device_id, min(epoch_ms(ts))
            AS first_t FROM read_parquet({everything}) GROUP BY customer_id, device_id"""
        )
        con.execute(
            f"""CREATE TABLE first_customer AS SELECT customer_id, min(epoch_ms(ts)) AS first_t
            FROM read_parquet({everything}) GROUP BY customer_id"""
        )
        # Home locations are optional (customers.parquet): without them km_from_home is missing.
        customers = root / "customers.parquet"
        if customers.exists():
            con.execute(
                "CREATE TABLE homes AS SELECT customer_id, home_latitude, home_longitude "
                f"FROM read_parquet('{_sql_path(customers)}')"
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
                f"COPY ({_batch_sql(sources, members, lower)} ORDER BY ts_ms, transaction_id) "
                f"TO '{part}' (FORMAT parquet, ROW_GROUP_SIZE 100000)"
            )
            batch_rows = con.execute(f"SELECT count(*) FROM '{part}'").fetchall()[0][0]
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
    summary = {
        "features_dir": str(final),
        "rows": rows,
        "parts": len(batches),
        "features": list(FEATURES),
        "rows_per_batch": rows_per_batch,
        "seconds": round(time.monotonic() - started, 2),
    }
    _write_json_atomic(building / "_features.json", summary)
    if final.exists():
        shutil.rmtree(final)
    os.replace(building, final)
    return summary


def build_features_task(
    dataset_dir: str, features_dir: str, fingerprint: str, rows_per_batch: int = 2_000_000
) -> dict[str, Any]:
    """:func:`build_features` under the cap of the guarded child (fingerprint: cache key)."""
    return build_features(dataset_dir, features_dir, rows_per_batch, cap_mb=guard_cap_mb())


# ---------------------------------------------------------------------------------------------
# Train and evaluate


def _parts(features_dir: str) -> str:
    if not Path(features_dir, "_features.json").exists():
        raise BadInput(f"features {features_dir}: no _features.json (features not complete)")
    return str(Path(features_dir) / "part-*.parquet").replace("'", "''")


def _encode(table: Any, categories: dict[str, list[str]]) -> Any:
    """The model matrix of an Arrow table, filled column by column (one copy of the data):
    numeric features as floats, categoricals as codes of a fixed vocabulary (unknown values
    and nulls become missing)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    matrix = np.empty((table.num_rows, len(FEATURES)), dtype=np.float64)
    for position, name in enumerate(NUMERIC_FEATURES):
        column = pc.cast(table.column(name), pa.float64())
        matrix[:, position] = column.to_numpy().astype(np.float64, copy=False)
    for offset, name in enumerate(CATEGORICAL):
        codes = pc.index_in(table.column(name), value_set=pa.array(categories[name], pa.string()))
        position = len(NUMERIC_FEATURES) + offset
        matrix[:, position] = pc.cast(codes, pa.float64()).to_numpy()
    return matrix


def train_model(
    features_dir: str,
    model_path: str,
    train_end_ms: int,
    model_params: dict[str, Any],
    seed: int = 0,
    rows_sampled: int = 1_000_000,
    cap_mb: float | None = None,
) -> dict[str, Any]:
    """Fit HistGradientBoosting on rows before ``train_end_ms``: every fraud row (up to half the
    sample) plus a hashed sample of genuine rows, weighted back to the true class ratio."""
    import numpy as np
    import pyarrow as pa
    from sklearn.ensemble import HistGradientBoostingClassifier

    started = time.monotonic()
    cap = cap_mb or guard_cap_mb()
    parts = _parts(features_dir)
    scratch = Path(model_path).parent / f".duckdb-{uuid.uuid4().hex[:8]}"
    con = connect_duckdb(cap / 2, str(scratch))
    try:
        train_rows, train_fraud = con.execute(
            f"SELECT count(*), count(*) FILTER (is_fraud) FROM read_parquet('{parts}') "
            f"WHERE ts_ms < {int(train_end_ms)}"
        ).fetchall()[0]
        if train_fraud < MIN_TRAIN_FRAUD:
            raise BadInput(
                f"train_end={iso(train_end_ms)}: only {train_fraud} fraud rows before it "
                f"(need {MIN_TRAIN_FRAUD}); move train_end later"
            )
        genuine = train_rows - train_fraud
        fraud_share = min(1.0, (rows_sampled / 2) / train_fraud)
        genuine_share = min(
            1.0, max(0, rows_sampled - min(train_fraud, rows_sampled // 2)) / genuine
        )
        categories = {
            name: sorted(
                v[0]
                for v in con.execute(
                    f"SELECT DISTINCT {name} FROM read_parquet('{parts}') "
                    f"WHERE ts_ms < {int(train_end_ms)} AND {name} IS NOT NULL"
                ).fetchall()
            )
            for name in CATEGORICAL
        }
        # A hash of (id, seed) picks the sample: the same rows whatever the thread count.
        pick = f"(hash(transaction_id, {int(seed)}) % 1000000) / 1000000.0"
        sample = f"""FROM read_parquet('{parts}') WHERE ts_ms < {int(train_end_ms)}
            AND ((is_fraud AND {pick} < {fraud_share})
                 OR (NOT is_fraud AND {pick} < {genuine_share}))"""
        (count,) = con.execute(f"SELECT count(*) {sample}").fetchall()[0]
        # The matrix is filled batch by batch: the sample is never held twice.
        matrix = np.empty((count, len(FEATURES)), dtype=np.float64)
        labels = np.empty(count, dtype=bool)
        columns = ", ".join(["transaction_id", "is_fraud", *FEATURES])
        reader = con.sql(f"SELECT {columns} {sample} ORDER BY transaction_id").to_arrow_reader(
            65_536
        )
        filled = 0
        for batch in reader:
            rows = batch.num_rows
            table = pa.Table.from_batches([batch])
            matrix[filled : filled + rows] = _encode(table, categories)
            labels[filled : filled + rows] = table.column("is_fraud").to_numpy().astype(bool)
            filled += rows
        if filled != count:
            raise RuntimeError(f"sampled {filled} rows, counted {count}")
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
    weights = np.where(labels, 1.0 / fraud_share, 1.0 / genuine_share)
    model = HistGradientBoostingClassifier(
        **model_params,
        categorical_features=[len(NUMERIC_FEATURES) + i for i in range(len(CATEGORICAL))],
        early_stopping=False,
        random_state=seed,
    )
    from threadpoolctl import threadpool_limits

    # OpenMP threads that find their cores busy spin and slow the fit down several times (seen
    # here: 1 thread 1.5 s, 2 threads 4.6 s on a shared 2-core machine): use half the cores.
    threads = max(1, min(duckdb_settings(cap, str(scratch))["threads"], (os.cpu_count() or 1) // 2))
    with threadpool_limits(limits=threads):
        model.fit(matrix, labels, sample_weight=weights)
    bundle = {
        "model": model,
        "features": list(FEATURES),
        "categories": categories,
        "train_end_ms": int(train_end_ms),
        "pipeline_version": PIPELINE_VERSION,
    }
    Path(model_path).parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(model_path).with_name(f".tmp-{uuid.uuid4().hex[:8]}-{Path(model_path).name}")
    with open(temporary, "wb") as handle:
        pickle.dump(bundle, handle, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(temporary, model_path)
    return {
        "model_path": model_path,
        "train_rows": int(train_rows),
        "train_fraud": int(train_fraud),
        "sampled_rows": int(len(labels)),
        "sampled_fraud": int(labels.sum()),
        "rows_sampled": int(rows_sampled),
        "model_bytes": os.path.getsize(model_path),
        "seconds": round(time.monotonic() - started, 2),
    }


def train_model_task(
    features_dir: str,
    model_path: str,
    train_end_ms: int,
    model_params: dict[str, Any],
    seed: int,
    fingerprint: str,
    rows_sampled: int = 1_000_000,
) -> dict[str, Any]:
    """:func:`train_model` under the cap of the guarded child (fingerprint: cache key)."""
    return train_model(
        features_dir, model_path, train_end_ms, model_params, seed, rows_sampled, guard_cap_mb()
    )


def recall_at_alert_rate(
    scores: Any, labels: Any, alert_rate: float, ids: Any = None
) -> tuple[Any, int]:
    """(mask of alerted rows, alert count): the top ``alert_rate`` share of rows by score, ties
    broken by transaction id so that the rows' order does not matter."""
    import numpy as np

    alerts = max(1, math.ceil(alert_rate * len(scores)))
    ids = np.arange(len(scores)) if ids is None else ids
    order = np.lexsort((ids, -scores))
    flagged = np.zeros(len(scores), dtype=bool)
    flagged[order[:alerts]] = True
    return flagged, alerts


def metrics_of(
    scores: Any, labels: Any, scenarios: Any, alert_rate: float, ids: Any = None
) -> dict[str, Any]:
    """PR-AUC, ROC-AUC and recall/precision at the alert rate, overall and per fraud scenario
    (each scenario's fraud rows against all genuine rows)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    fraud = int(labels.sum())
    if fraud == 0 or fraud == len(labels):
        raise BadInput(f"test period has {fraud} fraud rows of {len(labels)}: cannot evaluate")
    flagged, alerts = recall_at_alert_rate(scores, labels, alert_rate, ids)
    result: dict[str, Any] = {
        "rows": int(len(labels)),
        "fraud_rows": fraud,
        "fraud_rate": fraud / len(labels),
        "pr_auc": float(average_precision_score(labels, scores)),
        "roc_auc": float(roc_auc_score(labels, scores)),
        "alert_rate": alert_rate,
        "alerts": alerts,
        "recall_at_alert": float((flagged & labels).sum() / fraud),
        "precision_at_alert": float((flagged & labels).sum() / alerts),
    }
    # A trivial baseline (one score for all) has PR-AUC = the fraud rate.
    result["baseline_pr_auc"] = result["fraud_rate"]
    result["pr_auc_lift"] = result["pr_auc"] / result["fraud_rate"]
    genuine = ~labels
    per_scenario = {}
    for scenario in sorted(set(scenarios[labels].tolist())):
        mine = labels & (scenarios == scenario)
        subset = mine | genuine
        per_scenario[scenario] = {
            "rows": int(mine.sum()),
            "recall_at_alert": float((flagged & mine).sum() / mine.sum()),
            "pr_auc": float(average_precision_score(mine[subset], scores[subset])),
            "roc_auc": float(roc_auc_score(mine[subset], scores[subset])),
        }
    result["per_scenario"] = per_scenario
    return _rounded(result)


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 6) if isinstance(value, float) else value


def evaluate_model(
    features_dir: str,
    model_path: str,
    test_start_ms: int,
    metrics_path: str,
    alert_rate: float = 0.01,
    rows_per_batch: int = 250_000,
    cap_mb: float | None = None,
) -> dict[str, Any]:
    """Score the rows from ``test_start_ms`` on, batch by batch; write and return the metrics."""
    import numpy as np
    import pyarrow as pa
    from threadpoolctl import threadpool_limits

    started = time.monotonic()
    cap = cap_mb or guard_cap_mb()
    with open(model_path, "rb") as handle:
        bundle = pickle.load(handle)
    parts = _parts(features_dir)
    scratch = Path(metrics_path).parent / f".duckdb-{uuid.uuid4().hex[:8]}"
    con = connect_duckdb(cap / 2, str(scratch))
    scores, labels, scenarios, ids = [], [], [], []
    try:
        columns = ", ".join(["transaction_id", "is_fraud", "fraud_scenario", *FEATURES])
        # No ORDER BY: rows stream through in batches; ties are broken by id in the metrics.
        reader = con.sql(
            f"SELECT {columns} FROM read_parquet('{parts}') WHERE ts_ms >= {int(test_start_ms)}"
        ).to_arrow_reader(rows_per_batch)
        for batch in reader:
            if batch.num_rows == 0:
                continue
            frame = pa.Table.from_batches([batch])
            with threadpool_limits(limits=1):
                matrix = _encode(frame, bundle["categories"])
                scores.append(bundle["model"].predict_proba(matrix)[:, 1])
            labels.append(frame.column("is_fraud").to_numpy().astype(bool))
            ids.append(frame.column("transaction_id").to_numpy())
            scenarios.append(frame.column("fraud_scenario").to_numpy(zero_copy_only=False))
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
    if not scores:
        raise BadInput(f"test_start={iso(test_start_ms)}: no transactions from it on")
    # PR-AUC and ROC-AUC do not depend on the order; sort by id anyway for exact sums.
    order = np.argsort(np.concatenate(ids), kind="stable")
    metrics = metrics_of(
        np.concatenate(scores)[order],
        np.concatenate(labels)[order],
        np.concatenate(scenarios)[order],
        alert_rate,
        np.concatenate(ids)[order],
    )
    metrics["test_start"] = iso(test_start_ms)
    metrics["seconds"] = round(time.monotonic() - started, 2)
    _write_json_atomic(Path(metrics_path), metrics)
    return metrics


def evaluate_model_task(
    features_dir: str,
    model_path: str,
    test_start_ms: int,
    metrics_path: str,
    alert_rate: float,
    fingerprint: str,
    rows_per_batch: int = 250_000,
) -> dict[str, Any]:
    """:func:`evaluate_model` under the cap of the guarded child (fingerprint: cache key)."""
    return evaluate_model(
        features_dir,
        model_path,
        test_start_ms,
        metrics_path,
        alert_rate,
        rows_per_batch,
        guard_cap_mb(),
    )


# ---------------------------------------------------------------------------------------------
# Register


def model_card(
    version: str,
    health: dict[str, Any],
    metrics: dict[str, Any],
    training: dict[str, Any],
    params: dict[str, Any],
    split: dict[str, str],
) -> str:
    """The model card: data, split, parameters, metrics overall and per fraud scenario."""
    lines = [
        f"# Fraud model {version}",
        "",
        "HistGradientBoostingClassifier (scikit-learn) on per-customer and per-device "
        "transaction features (1 h / 24 h / 7 d windows).",
        "",
        "## Data",
        f"- dataset: `{health['dataset']}` (fingerprint `{health['fingerprint'][:16]}`)",
        f"- {health['rows']:,} transactions in {health['files']} files, "
        f"{health['fraud_rows']:,} fraud",
        f"- train: before {split['train_end']} ({training['train_rows']:,} rows, "
        f"{training['train_fraud']:,} fraud; sampled {training['sampled_rows']:,})",
        f"- test: from {split['test_start']} ({metrics['rows']:,} rows, "
        f"{metrics['fraud_rows']:,} fraud)",
        "",
        "## Parameters",
        *[f"- {k}: {v}" for k, v in sorted(params.items())],
        "",
        "## Metrics (test period)",
        "| metric | value |",
        "|---|---|",
        f"| PR-AUC | {metrics['pr_auc']:.4f} |",
        f"| PR-AUC of a trivial baseline (fraud rate) | {metrics['baseline_pr_auc']:.4f} |",
        f"| lift over the baseline | {metrics['pr_auc_lift']:.1f}x |",
        f"| ROC-AUC | {metrics['roc_auc']:.4f} |",
        f"| recall at {metrics['alert_rate']:.2%} alerts | {metrics['recall_at_alert']:.4f} |",
        f"| precision at {metrics['alert_rate']:.2%} alerts | "
        f"{metrics['precision_at_alert']:.4f} |",
        "",
        "## Per fraud scenario",
        "| scenario | fraud rows | recall at alert rate | PR-AUC | ROC-AUC |",
        "|---|---|---|---|---|",
    ]
    for scenario, values in metrics["per_scenario"].items():
        lines.append(
            f"| {scenario} | {values['rows']:,} | {values['recall_at_alert']:.4f} | "
            f"{values['pr_auc']:.4f} | {values['roc_auc']:.4f} |"
        )
    lines += ["", "## Features", ", ".join(f"`{name}`" for name in FEATURES), ""]
    return "\n".join(lines)


def model_version(
    fingerprint: str, model_params: dict[str, Any], split: dict[str, str], seed: int
) -> str:
    """A model version named by what made it: the data fingerprint and the settings."""
    settings = {"params": model_params, "split": split, "seed": seed, "pipeline": PIPELINE_VERSION}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{fingerprint[:12]}-{digest[:8]}"


def register_model(
    out: str,
    version: str,
    model_path: str,
    metrics: dict[str, Any],
    training: dict[str, Any],
    health: dict[str, Any],
    params: dict[str, Any],
    split: dict[str, str],
) -> dict[str, Any]:
    """Publish a version into the registry: model, metrics, features, fingerprint, card, then
    ``registration.json`` (the version is complete) and ``latest.json`` (the pointer)."""
    from headroom.storage import open_storage

    storage = open_storage(out)
    prefix = f"{MODEL_NAME}/{version}"
    with storage.atomic_output(f"{prefix}/model.pkl") as temporary:
        with (
            open(model_path, "rb") as source,
            storage.filesystem.open_output_stream(temporary) as sink,
        ):
            while block := source.read(8 << 20):
                sink.write(block)
    card = model_card(version, health, metrics, training, params, split)
    storage.write_json(f"{prefix}/metrics.json", metrics)
    storage.write_json(f"{prefix}/features.json", {"features": list(FEATURES)})
    storage.write_json(
        f"{prefix}/fingerprint.json",
        {k: health[k] for k in ("dataset", "fingerprint", "files", "rows", "bytes", "seed")},
    )
    with storage.atomic_output(f"{prefix}/MODEL_CARD.md") as temporary:
        with storage.filesystem.open_output_stream(temporary) as sink:
            sink.write(card.encode())
    registration = {
        "name": MODEL_NAME,
        "version": version,
        "fingerprint": health["fingerprint"],
        "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": [
            "model.pkl",
            "metrics.json",
            "features.json",
            "fingerprint.json",
            "MODEL_CARD.md",
        ],
        "pr_auc": metrics["pr_auc"],
        "params": params,
        "split": split,
        "pipeline": PIPELINE_VERSION,
    }
    storage.write_json(f"{prefix}/registration.json", registration)
    storage.write_json(f"{MODEL_NAME}/latest.json", {"version": version, "path": prefix})
    return {
        "version": version,
        "uri": storage.path(prefix) if storage.is_local else f"{out.rstrip('/')}/{prefix}",
        "card": card,
    }


def _write_json_atomic(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True, default=str))
    os.replace(temporary, path)
