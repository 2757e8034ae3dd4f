"""The fraud-model pipeline's vocabulary: its columns, features and time helpers.

The steps live beside it in flows.ml_pipeline, each a module that does not import prefect
(guarded children import them and start fast): ``dataset`` (manifest, fingerprint, health
check), ``features`` (DuckDB features under the cap), ``model`` (train, evaluate),
``registry`` (publish a version). Every step reads files and writes files and returns a small
JSON-able record (paths, counts, metrics): the data never travels through the orchestrator.
The flow's parameters are in ``params`` (pydantic stays out of the children).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Bump when a step's output changes meaning: it is part of every cache key.
PIPELINE_VERSION = "ml-1"
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


def local_path(location: str) -> Path | None:
    """The local directory a dataset or registry location names; None for a remote URL."""
    if "://" in location and not location.startswith("file://"):
        return None
    return Path(location.removeprefix("file://")).resolve()
