"""What a synthetic card-fraud dataset is: its vocabulary, transaction schema and spec.

The :class:`DatasetSpec` holds everything that decides a dataset's content; the world
(``flows/fraud_synth/world.py``) and the transaction files (``flows/fraud_synth/generate.py``)
are functions of it. No prefect, and pyarrow only inside the functions that build Arrow.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from headroom.errors import BadInput

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMA_VERSION = 1
DAY_MS = 86_400_000
HOUR_MS = 3_600_000

CATEGORIES = (
    "grocery_pos",
    "grocery_net",
    "gas_transport",
    "shopping_pos",
    "shopping_net",
    "food_dining",
    "entertainment",
    "health_fitness",
    "home",
    "kids_pets",
    "misc_pos",
    "misc_net",
    "personal_care",
    "travel",
    "cash_withdrawal",
)
CHANNELS = ("pos", "online", "contactless", "atm")
SCENARIOS = ("none", "amount_outlier", "compromised_device", "account_takeover", "card_testing")
FRAUD_SCENARIOS = SCENARIOS[1:]
PROFILES = ("young_urban", "family", "commuter", "retired", "high_spender", "rural")
DEVICE_KINDS = ("card", "phone", "browser", "wearable", "fraudster")
NIGHT_HOURS = 5  # card testing happens between 00:00 and 05:00

# Transaction Parquet bytes per row on disk, measured with the default chunking: turns a
# target ``size`` into a transaction count.
BYTES_PER_TRANSACTION = {"zstd": 19.0, "snappy": 22.0, "lz4": 22.0, "gzip": 19.0, "none": 25.0}
COMPRESSIONS = tuple(BYTES_PER_TRANSACTION)


@functools.cache
def transaction_schema() -> pa.Schema:
    """The Arrow schema of the transaction files: what ml_pipeline and stream_stats read."""
    import pyarrow as pa

    category = pa.dictionary(pa.int32(), pa.string())
    return pa.schema(
        [
            ("transaction_id", pa.int64()),
            ("ts", pa.timestamp("ms", tz="UTC")),
            ("customer_id", pa.int64()),
            ("device_id", pa.int64()),
            ("merchant_id", pa.int64()),
            ("merchant_category", category),
            ("channel", category),
            ("amount", pa.float64()),
            ("latitude", pa.float32()),
            ("longitude", pa.float32()),
            ("is_fraud", pa.bool_()),
            ("fraud_scenario", category),
        ]
    )


DICTIONARY_COLUMNS = {
    "merchant_category": CATEGORIES,
    "channel": CHANNELS,
    "fraud_scenario": SCENARIOS,
}


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that decides a dataset's content; JSON-able, so tasks can take it."""

    seed: int
    transactions: int
    start: str  # first day, ISO date
    end: str  # last day (inclusive), ISO date
    transactions_per_file: int
    customers: int
    merchants: int
    fraud_rate: float
    compression: str = "zstd"

    @property
    def files(self) -> int:
        return math.ceil(self.transactions / self.transactions_per_file)

    @property
    def start_ms(self) -> int:
        return _day_ms(self.start)

    @property
    def end_ms(self) -> int:
        """Exclusive end: midnight after the last day."""
        return _day_ms(self.end) + DAY_MS

    def first_row(self, index: int) -> int:
        return index * self.transactions_per_file

    def rows_in_file(self, index: int) -> int:
        if not 0 <= index < self.files:
            raise BadInput(f"index: file {index} outside 0..{self.files - 1}")
        return min(self.transactions_per_file, self.transactions - self.first_row(index))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> DatasetSpec:
        return cls(**{k: document[k] for k in cls.__dataclass_fields__})


def _day_ms(day: str | date) -> int:
    value = date.fromisoformat(day) if isinstance(day, str) else day
    return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() * 1000)


def plan_dataset(
    *,
    transactions: int,
    seed: int = 0,
    start: str | date = "2024-01-01",
    end: str | date = "2024-01-31",
    files: int | None = None,
    transactions_per_file: int | None = None,
    customers: int | None = None,
    merchants: int | None = None,
    fraud_rate: float = 0.008,
    compression: str = "zstd",
) -> DatasetSpec:
    """A :class:`DatasetSpec` with derived defaults; bad values raise BadInput naming them."""
    start_day = date.fromisoformat(start) if isinstance(start, str) else start
    end_day = date.fromisoformat(end) if isinstance(end, str) else end
    if transactions < 1:
        raise BadInput(f"transactions: must be at least 1, got {transactions}")
    if end_day < start_day:
        raise BadInput(f"end: {end_day} is before start {start_day}")
    if not 0.0 <= fraud_rate <= 1.0:
        raise BadInput(f"fraud_rate: must be in [0, 1], got {fraud_rate}")
    if compression not in BYTES_PER_TRANSACTION:
        raise BadInput(f"compression: {compression!r} not one of {', '.join(COMPRESSIONS)}")
    if transactions_per_file is None:
        transactions_per_file = math.ceil(transactions / max(1, files or 1))
    if transactions_per_file < 1:
        raise BadInput(f"transactions_per_file: must be at least 1, got {transactions_per_file}")
    days = (end_day - start_day).days + 1
    if customers is None:
        customers = int(min(1_000_000, max(100, round(transactions / (days * 1.6)))))
    if customers < 1:
        raise BadInput(f"customers: must be at least 1, got {customers}")
    if merchants is None:
        merchants = int(min(200_000, max(100, customers // 10)))
    if merchants < len(CATEGORIES):
        raise BadInput(f"merchants: need at least {len(CATEGORIES)}, got {merchants}")
    return DatasetSpec(
        seed=int(seed),
        transactions=int(transactions),
        start=start_day.isoformat(),
        end=end_day.isoformat(),
        transactions_per_file=int(min(transactions_per_file, transactions)),
        customers=int(customers),
        merchants=int(merchants),
        fraud_rate=float(fraud_rate),
        compression=compression,
    )


def transactions_for_size(size_bytes: int, compression: str) -> int:
    """How many transactions make about ``size_bytes`` of Parquet on disk."""
    return max(1, round(size_bytes / BYTES_PER_TRANSACTION[compression]))


def dictionary_array(name: str) -> pa.Array:
    """The fixed dictionary of one dictionary column of the transaction schema."""
    return string_array(DICTIONARY_COLUMNS[name])


@functools.cache
def string_array(values: tuple[str, ...]) -> pa.Array:
    """An Arrow string array of ``values`` (built once per dictionary)."""
    from flows.common.arrow import strings

    return strings(list(values))
