"""Synthetic card-fraud data: reference tables and transaction files, at flat memory.

Pure generation code (no prefect): the flow in ``flows/fraud_synth.py`` runs
:func:`write_transaction_file` as budgeted tasks, and other workloads' tests call
:func:`generate_dataset_local` for a small dataset in one call.

Every row is a function of the dataset spec and its global row number only. A file is made
of fixed blocks of :data:`BLOCK_ROWS` rows, each with its own random stream seeded by
(seed, file, block); the chunk size only decides how many rows go into one row group. A
retry with a smaller chunk therefore writes the same rows (same content checksum), and at
the same chunk size the same bytes. Timestamps come from the inverse of the dataset's
volume curve (daily volume x time-of-day profile) at the row's quantile, so rows are in
time order inside a file and across files without any sort.

Layout of a dataset (see /work/fraud-schema.md): ``customers.parquet``, ``devices.parquet``,
``merchants.parquet``, ``transactions/part-NNNNN.parquet``, ``manifest.json``; each finished
file also leaves ``_parts/part-NNNNN.json`` (its manifest entry) so that a re-run resumes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from headroom.errors import BadInput

if TYPE_CHECKING:
    import pyarrow as pa

    from headroom.storage import Storage

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
GENERATOR = "fraud_synth/1"
BLOCK_ROWS = 65_536
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

# Median amount and log-sigma per category (a skewed, lognormal amount distribution).
_AMOUNT_MEDIAN = np.array([55, 45, 48, 40, 50, 22, 28, 30, 45, 32, 18, 14, 20, 110, 80.0])
_AMOUNT_SIGMA = np.array(
    [0.6, 0.6, 0.4, 1.0, 1.1, 0.7, 0.9, 0.7, 0.9, 0.9, 1.1, 1.2, 0.8, 1.1, 0.5]
)
# Category preference per profile (rows: PROFILES, columns: CATEGORIES).
_CATEGORY_WEIGHTS = np.array(
    [
        [6, 6, 5, 6, 12, 12, 10, 6, 2, 1, 6, 8, 6, 4, 4],
        [14, 6, 10, 8, 6, 8, 5, 3, 8, 10, 5, 3, 4, 3, 3],
        [8, 3, 16, 6, 5, 10, 4, 4, 4, 3, 6, 3, 4, 4, 4],
        [14, 2, 6, 6, 2, 8, 3, 6, 8, 3, 5, 1, 6, 4, 6],
        [6, 6, 5, 12, 14, 10, 8, 6, 6, 2, 4, 5, 6, 10, 2],
        [14, 2, 14, 8, 3, 6, 3, 2, 8, 6, 8, 2, 3, 2, 6],
    ],
    dtype=np.float64,
)
_PROFILE_SHARE = np.array([0.2, 0.25, 0.2, 0.15, 0.05, 0.15])
_PROFILE_AMOUNT = np.array([0.8, 1.0, 0.9, 0.85, 2.2, 0.9])
_PROFILE_RATE = np.array([2.2, 1.6, 1.8, 0.9, 2.6, 1.1])
# Channel probabilities (pos, online, contactless, atm) per category.
_IN_PERSON = (0.45, 0.05, 0.5, 0.0)
_CHANNEL_WEIGHTS = np.array(
    [
        _IN_PERSON,
        (0, 1, 0, 0),
        (0.5, 0.02, 0.48, 0),
        _IN_PERSON,
        (0, 1, 0, 0),
        _IN_PERSON,
        (0.35, 0.3, 0.35, 0),
        _IN_PERSON,
        (0.4, 0.3, 0.3, 0),
        _IN_PERSON,
        _IN_PERSON,
        (0, 1, 0, 0),
        _IN_PERSON,
        (0.2, 0.6, 0.2, 0),
        (0, 0, 0, 1),
    ]
)
# Share of the day's volume per UTC hour: quiet nights, a lunch and an evening peak.
_HOUR_WEIGHTS = np.array(
    [1.2, 0.7, 0.5, 0.4, 0.5, 1.0, 2.2, 3.8, 4.8, 5.2, 5.6, 6.2]
    + [6.8, 6.4, 5.8, 5.6, 5.9, 6.5, 7.0, 6.6, 5.4, 4.0, 2.8, 1.8]
)
_WEEKDAY_WEIGHTS = np.array([0.95, 0.93, 0.96, 1.0, 1.12, 1.2, 0.98])  # Monday first
NIGHT_HOURS = 5  # card testing happens between 00:00 and 05:00
# Share of fraud rows per scenario (amount_outlier, compromised_device, account_takeover,
# card_testing).
_SCENARIO_SHARE = np.array([0.2, 0.3, 0.3, 0.2])
_BURST_MIN, _BURST_MAX = 4, 16
_CITIES = 40
_LAT_RANGE, _LON_RANGE = (25.0, 49.0), (-124.0, -67.0)

# Transaction Parquet bytes per row on disk, measured with the default chunking: turns a
# target ``size`` into a transaction count.
BYTES_PER_TRANSACTION = {"zstd": 19.0, "snappy": 22.0, "lz4": 22.0, "gzip": 19.0, "none": 25.0}
COMPRESSIONS = tuple(BYTES_PER_TRANSACTION)


def transaction_schema() -> pa.Schema:
    """The Arrow schema of the transaction files (fraud-schema.md)."""
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


# --------------------------------------------------------------------------------------------
# Phase 1: the world (customers, devices, merchants, compromised windows), from the seed only.


@dataclass(frozen=True)
class Windows:
    """Fraud windows of equal length whose starts are evenly spaced over the date range.

    ``length >= step`` guarantees at least one window is open at every instant, so a fraud
    row can always pick an open window in O(1), vectorised.
    """

    start_ms: int
    step_ms: float
    length_ms: int
    count: int

    @classmethod
    def spread(cls, start_ms: int, end_ms: int, length_ms: int, wanted: int) -> Windows:
        span = end_ms - start_ms
        length_ms = min(length_ms, span)
        count = max(wanted, math.ceil(span / length_ms) + 1, 2)
        return cls(start_ms, span / (count - 1), length_ms, count)

    def pick(self, ts_ms: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """For each time, one window open at that time (uniform among the open ones)."""
        offset = (ts_ms - self.start_ms).astype(np.float64)
        high = np.minimum(np.floor(offset / self.step_ms), self.count - 1)
        low = np.maximum(np.ceil((offset - self.length_ms) / self.step_ms), 0)
        return (low + np.floor(uniform * (high - low + 1))).astype(np.int64)

    def bounds_ms(self, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        begin = self.start_ms + np.floor(j * self.step_ms).astype(np.int64)
        return begin, begin + self.length_ms


@dataclass
class World:
    """The reference tables and lookup arrays every transaction file needs (read-only)."""

    spec: DatasetSpec
    home_lat: np.ndarray  # float32 per customer
    home_lon: np.ndarray
    profile: np.ndarray  # uint8 per customer
    mean_amount: np.ndarray  # float64 per customer
    std_amount: np.ndarray
    mean_tx_per_day: np.ndarray  # float32
    amount_scale: np.ndarray  # float32: customer's mean amount / the population's
    device_offset: np.ndarray  # int64: the customer's first device id
    device_count: np.ndarray  # uint8
    customer_pool: np.ndarray  # int32: customers repeated by volume, for O(1) weighted draws
    merchant_category: np.ndarray  # uint8 per merchant (merchants sorted by category)
    merchant_lat: np.ndarray
    merchant_lon: np.ndarray
    category_offset: np.ndarray  # int64 per category: first merchant id
    category_count: np.ndarray  # int64 per category
    fraud_device_first: int  # fraudster devices: ids [first, first + count)
    fraud_device_count: int
    time_cdf: np.ndarray  # volume quantile at each hour edge
    time_edges_ms: np.ndarray
    night_share: float
    device_windows: Windows
    device_victims: np.ndarray  # device id per compromised-device window
    device_owners: np.ndarray
    takeover_windows: Windows
    takeover_victims: np.ndarray  # customer per account-takeover window
    takeover_devices: np.ndarray  # fraudster device per takeover
    window_lat: np.ndarray  # where each window's fraudster is (shared by both kinds)
    window_lon: np.ndarray
    category_table: np.ndarray = field(repr=False)  # uint8 [profile, 1024] quantised draws
    channel_table: np.ndarray = field(repr=False)  # uint8 [category, 256]
    online_merchants: np.ndarray = field(repr=False)  # merchant ids of *_net categories

    @property
    def devices(self) -> int:
        return self.fraud_device_first + self.fraud_device_count


def _quantised_table(weights: np.ndarray, width: int) -> np.ndarray:
    """Rows of ``width`` codes whose frequencies follow each row of ``weights``."""
    cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    points = (np.arange(width) + 0.5) / width
    return np.stack([np.searchsorted(row, points, side="right") for row in cumulative]).astype(
        np.uint8
    )


def _uniform_points(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    lat = rng.uniform(*_LAT_RANGE, n).astype(np.float32)
    lon = rng.uniform(*_LON_RANGE, n).astype(np.float32)
    return lat, lon


@functools.lru_cache(maxsize=2)
def build_world(spec: DatasetSpec) -> World:
    """Customers, devices, merchants and fraud windows: vectorised, a function of the spec."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x5EED]))
    n = spec.customers
    city_lat, city_lon = _uniform_points(rng, _CITIES)
    city = rng.integers(0, _CITIES, n)
    profile = rng.choice(len(PROFILES), n, p=_PROFILE_SHARE).astype(np.uint8)
    spread = np.where(profile == PROFILES.index("rural"), 1.2, 0.25).astype(np.float32)
    home_lat = city_lat[city] + rng.standard_normal(n, dtype=np.float32) * spread
    home_lon = city_lon[city] + rng.standard_normal(n, dtype=np.float32) * spread
    mean_amount = np.round(40.0 * _PROFILE_AMOUNT[profile] * rng.lognormal(0, 0.35, n), 2)
    std_amount = np.round(mean_amount * rng.uniform(0.3, 0.8, n), 2)
    rate = _PROFILE_RATE[profile] * rng.lognormal(0, 0.45, n)
    days = (spec.end_ms - spec.start_ms) / DAY_MS
    # Scale the customers' rates so they add up to the dataset's actual volume.
    rate *= spec.transactions / (days * rate.sum())
    device_count = (1 + np.minimum(rng.poisson(1.3, n), 3)).astype(np.uint8)
    device_offset = np.zeros(n, dtype=np.int64)
    np.cumsum(device_count[:-1], out=device_offset[1:])
    customer_devices = int(device_offset[-1] + device_count[-1])
    pool_size = int(min(1 << 24, max(4 * n, 1 << 16)))
    expected = rate / rate.sum() * pool_size
    copies = np.floor(expected + rng.random(n)).astype(np.int64)  # unbiased rounding
    customer_pool = np.repeat(np.arange(n, dtype=np.int32), copies)
    if customer_pool.size == 0:
        customer_pool = np.arange(n, dtype=np.int32)

    m = spec.merchants
    category_share = _CATEGORY_WEIGHTS.sum(axis=0)
    merchant_category = np.sort(
        rng.choice(len(CATEGORIES), m, p=category_share / category_share.sum())
    ).astype(np.uint8)
    merchant_category[: len(CATEGORIES)] = np.arange(len(CATEGORIES))  # every category exists
    merchant_category.sort()
    category_count = np.bincount(merchant_category, minlength=len(CATEGORIES)).astype(np.int64)
    category_offset = np.concatenate([[0], np.cumsum(category_count)[:-1]]).astype(np.int64)
    merchant_city = rng.integers(0, _CITIES, m)
    merchant_lat = city_lat[merchant_city] + rng.standard_normal(m, dtype=np.float32) * 0.3
    merchant_lon = city_lon[merchant_city] + rng.standard_normal(m, dtype=np.float32) * 0.3
    online = np.isin(merchant_category, [CATEGORIES.index(c) for c in CATEGORIES if "_net" in c])
    online_merchants = np.flatnonzero(online).astype(np.int64)

    hours = math.ceil((spec.end_ms - spec.start_ms) / HOUR_MS)
    day_index = np.arange(hours) // 24
    first = date.fromisoformat(spec.start)
    weekday = (first.weekday() + day_index) % 7
    day_of_year = (first.timetuple().tm_yday + day_index) % 365
    seasonal = 1 + 0.3 * np.exp(-(((day_of_year - 352) / 10.0) ** 2))  # December peak
    day_noise = rng.lognormal(0, 0.05, day_index[-1] + 1)[day_index]
    weights = (
        _WEEKDAY_WEIGHTS[weekday] * seasonal * day_noise * _HOUR_WEIGHTS[np.arange(hours) % 24]
    )
    time_cdf = np.concatenate([[0.0], np.cumsum(weights)])
    time_cdf /= time_cdf[-1]
    time_edges_ms = spec.start_ms + np.arange(hours + 1, dtype=np.int64) * HOUR_MS
    night_share = float(_HOUR_WEIGHTS[:NIGHT_HOURS].sum() / _HOUR_WEIGHTS.sum())

    fraud_device_count = max(16, n // 200)
    device_windows = Windows.spread(
        spec.start_ms, spec.end_ms, 28 * DAY_MS, max(1, customer_devices // 2000)
    )
    device_victims = rng.integers(0, customer_devices, device_windows.count)
    device_owners = np.searchsorted(device_offset, device_victims, side="right") - 1
    takeover_windows = Windows.spread(spec.start_ms, spec.end_ms, 14 * DAY_MS, max(1, n // 1000))
    takeover_victims = rng.integers(0, n, takeover_windows.count)
    takeover_devices = customer_devices + rng.integers(
        0, fraud_device_count, takeover_windows.count
    )
    window_lat, window_lon = _uniform_points(rng, max(device_windows.count, takeover_windows.count))
    return World(
        spec=spec,
        home_lat=home_lat.astype(np.float32),
        home_lon=home_lon.astype(np.float32),
        profile=profile,
        mean_amount=mean_amount,
        std_amount=std_amount,
        mean_tx_per_day=rate.astype(np.float32),
        amount_scale=(mean_amount / mean_amount.mean()).astype(np.float32),
        device_offset=device_offset,
        device_count=device_count,
        customer_pool=customer_pool,
        merchant_category=merchant_category,
        merchant_lat=merchant_lat.astype(np.float32),
        merchant_lon=merchant_lon.astype(np.float32),
        category_offset=category_offset,
        category_count=category_count,
        fraud_device_first=customer_devices,
        fraud_device_count=fraud_device_count,
        time_cdf=time_cdf,
        time_edges_ms=time_edges_ms,
        night_share=night_share,
        device_windows=device_windows,
        device_victims=device_victims,
        device_owners=device_owners,
        takeover_windows=takeover_windows,
        takeover_victims=takeover_victims,
        takeover_devices=takeover_devices,
        window_lat=window_lat,
        window_lon=window_lon,
        category_table=_quantised_table(_CATEGORY_WEIGHTS, 1024),
        channel_table=_quantised_table(_CHANNEL_WEIGHTS + 1e-12, 256),
        online_merchants=online_merchants,
    )


def reference_tables(world: World) -> dict[str, pa.Table]:
    """customers, devices and merchants as Arrow tables (fraud-schema.md)."""
    import pyarrow as pa

    def dictionary(codes: np.ndarray, values: tuple[str, ...]) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(
            pa.array(codes.astype(np.int32)), pa.array(values, pa.string())
        )

    n = world.spec.customers
    owners = np.repeat(np.arange(n, dtype=np.int64), world.device_count)
    rank = np.arange(owners.size) - np.repeat(world.device_offset, world.device_count)
    kinds = np.where(rank == 0, 0, 1 + (rank - 1) % 3)
    fraudsters = world.fraud_device_count
    customers = pa.table(
        {
            "customer_id": pa.array(np.arange(n, dtype=np.int64)),
            "home_latitude": pa.array(world.home_lat),
            "home_longitude": pa.array(world.home_lon),
            "profile": dictionary(world.profile, PROFILES),
            "mean_amount": pa.array(world.mean_amount),
            "std_amount": pa.array(world.std_amount),
            "mean_tx_per_day": pa.array(world.mean_tx_per_day),
        }
    )
    devices = pa.table(
        {
            "device_id": pa.array(np.arange(world.devices, dtype=np.int64)),
            # Fraudster devices belong to no customer: owner -1.
            "customer_id": pa.array(np.concatenate([owners, np.full(fraudsters, -1)])),
            "kind": dictionary(
                np.concatenate([kinds, np.full(fraudsters, DEVICE_KINDS.index("fraudster"))]),
                DEVICE_KINDS,
            ),
        }
    )
    merchants = pa.table(
        {
            "merchant_id": pa.array(np.arange(world.spec.merchants, dtype=np.int64)),
            "merchant_category": dictionary(world.merchant_category, CATEGORIES),
            "latitude": pa.array(world.merchant_lat),
            "longitude": pa.array(world.merchant_lon),
        }
    )
    return {"customers": customers, "devices": devices, "merchants": merchants}


def write_reference_tables(out: str, spec: dict[str, Any]) -> dict[str, int]:
    """Phase 1: write customers/devices/merchants Parquet atomically; rows per table."""
    import pyarrow.parquet as pq

    storage = open_out(out)
    world = build_world(DatasetSpec.from_dict(spec))
    counts = {}
    for name, table in reference_tables(world).items():
        with storage.atomic_output(f"{name}.parquet") as temporary:
            pq.write_table(
                table, temporary, filesystem=storage.filesystem, compression=world.spec.compression
            )
        counts[name] = table.num_rows
    return counts


# --------------------------------------------------------------------------------------------
# Phase 2: transactions, block by block.


def generate_block(world: World, file_index: int, block: int) -> dict[str, np.ndarray]:
    """Columns of one block: the dictionary columns as uint8 codes into the fixed values."""
    spec = world.spec
    first = spec.first_row(file_index) + block * BLOCK_ROWS
    n = min(BLOCK_ROWS, spec.first_row(file_index) + spec.rows_in_file(file_index) - first)
    if n <= 0:
        raise ValueError(f"block {block} is past the end of file {file_index}")
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, file_index, block, 0xF4A0D]))
    row = np.arange(first, first + n, dtype=np.int64)
    # Row g sits at volume quantile (g + u) / N: increasing in g, so no sort is needed.
    quantile = (row + rng.random(n)) / spec.transactions
    ts = np.interp(quantile, world.time_cdf, world.time_edges_ms).astype(np.int64)
    ts = np.minimum(ts, spec.end_ms - 1)

    customer = world.customer_pool[rng.integers(0, world.customer_pool.size, n)].astype(np.int64)
    draws = rng.integers(0, 1 << 30, n, dtype=np.int32)  # one integer feeds several picks
    category = world.category_table[world.profile[customer], draws & 1023]
    channel = world.channel_table[category, (draws >> 10) & 255]
    merchant = world.category_offset[category] + (
        ((draws >> 18) & 4095) * world.category_count[category] >> 12
    )
    picks = rng.random(n, dtype=np.float32)
    in_person = (channel == 0) | (channel == 3)  # pos and atm use the card, the first device
    device = world.device_offset[customer] + np.where(
        in_person, 0, (picks * world.device_count[customer]).astype(np.int64)
    )
    log_amount = np.log(_AMOUNT_MEDIAN)[category] + _AMOUNT_SIGMA[category] * rng.standard_normal(n)
    amount = np.exp(log_amount) * world.amount_scale[customer]
    noise = rng.standard_normal((2, n), dtype=np.float32)
    latitude = world.home_lat[customer] + noise[0] * np.float32(0.05)
    longitude = world.home_lon[customer] + noise[1] * np.float32(0.05)

    scenario = np.zeros(n, dtype=np.uint8)
    _inject_fraud(
        world, rng, ts, scenario, customer, device, merchant, category, channel, amount,
        latitude, longitude,
    )  # fmt: skip
    amount = np.maximum(np.round(amount, 2), 0.01)
    return {
        "transaction_id": row,
        "ts": ts,
        "customer_id": customer,
        "device_id": device,
        "merchant_id": merchant,
        "merchant_category": category,
        "channel": channel,
        "amount": amount,
        "latitude": latitude,
        "longitude": longitude,
        "is_fraud": scenario != 0,
        "fraud_scenario": scenario,
    }


def _inject_fraud(
    world: World,
    rng: np.random.Generator,
    ts: np.ndarray,
    scenario: np.ndarray,
    customer: np.ndarray,
    device: np.ndarray,
    merchant: np.ndarray,
    category: np.ndarray,
    channel: np.ndarray,
    amount: np.ndarray,
    latitude: np.ndarray,
    longitude: np.ndarray,
) -> None:
    """Overwrite a few rows in place with the four fraud scenarios."""
    n = ts.size
    rate = world.spec.fraud_rate
    if rate <= 0:
        return
    share = rate * _SCENARIO_SHARE
    draw = rng.random(n)
    bounds = np.cumsum(share)

    outlier = np.flatnonzero(draw < bounds[0])
    scenario[outlier] = 1
    # Far above anything the customer normally spends (the simulators' threshold rule).
    amount[outlier] = amount[outlier] * rng.uniform(6, 15, outlier.size) + 250

    stolen = np.flatnonzero((draw >= bounds[0]) & (draw < bounds[1]))
    window = world.device_windows.pick(ts[stolen], rng.random(stolen.size))
    scenario[stolen] = 2
    device[stolen] = world.device_victims[window]
    customer[stolen] = world.device_owners[window]
    amount[stolen] *= rng.uniform(1.5, 4.0, stolen.size)
    latitude[stolen] = world.window_lat[window] + rng.normal(0, 0.05, stolen.size)
    longitude[stolen] = world.window_lon[window] + rng.normal(0, 0.05, stolen.size)

    taken = np.flatnonzero((draw >= bounds[1]) & (draw < bounds[2]))
    window = world.takeover_windows.pick(ts[taken], rng.random(taken.size))
    victim = world.takeover_victims[window]
    scenario[taken] = 3
    customer[taken] = victim
    device[taken] = world.takeover_devices[window]
    channel[taken] = CHANNELS.index("online")
    amount[taken] = world.mean_amount[victim] * rng.uniform(3, 8, taken.size)
    latitude[taken] = world.window_lat[window] + rng.normal(0, 0.05, taken.size)
    longitude[taken] = world.window_lon[window] + rng.normal(0, 0.05, taken.size)

    # Card testing: bursts of tiny online payments from one stolen card, at night. A burst
    # starts at a night row with a probability that yields the scenario's share overall.
    mean_burst = (_BURST_MIN + _BURST_MAX - 1) / 2
    start_p = share[3] / (mean_burst * world.night_share)
    night = (ts // HOUR_MS) % 24 < NIGHT_HOURS
    starts = np.flatnonzero(night & (draw >= bounds[2]) & (draw < bounds[2] + start_p))
    if starts.size:
        lengths = rng.integers(_BURST_MIN, _BURST_MAX, starts.size)
        burst = np.repeat(np.arange(starts.size), lengths)
        rows = starts[burst] + (
            np.arange(burst.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        inside = rows < n
        rows, burst = rows[inside], burst[inside]
        keep = night[rows]  # a burst stops at dawn
        rows, burst = rows[keep], burst[keep]
        victim = world.customer_pool[rng.integers(0, world.customer_pool.size, starts.size)]
        fraud_device = world.fraud_device_first + rng.integers(
            0, world.fraud_device_count, starts.size
        )
        target = world.online_merchants[rng.integers(0, world.online_merchants.size, starts.size)]
        where_lat, where_lon = _uniform_points(rng, starts.size)
        scenario[rows] = 4
        customer[rows] = victim[burst]
        device[rows] = fraud_device[burst]
        merchant[rows] = target[burst]
        category[rows] = world.merchant_category[target[burst]]
        channel[rows] = CHANNELS.index("online")
        amount[rows] = rng.uniform(0.5, 5.0, rows.size)
        latitude[rows] = where_lat[burst]
        longitude[rows] = where_lon[burst]


def blocks_in_file(spec: DatasetSpec, index: int) -> int:
    """How many fixed blocks file ``index`` has."""
    return math.ceil(spec.rows_in_file(index) / BLOCK_ROWS)


def _to_batch(columns: dict[str, np.ndarray], schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    arrays = []
    for arrow_field in schema:
        values = columns[arrow_field.name]
        if arrow_field.name in DICTIONARY_COLUMNS:
            indices = _from_numpy(values.astype(np.int32), pa.int32())
            arrays.append(pa.DictionaryArray.from_arrays(indices, _dictionary(arrow_field.name)))
        elif values.dtype == np.bool_:
            bits = np.packbits(values, bitorder="little")
            arrays.append(
                pa.Array.from_buffers(pa.bool_(), values.size, [None, pa.py_buffer(bits)])
            )
        else:
            arrays.append(_from_numpy(values, arrow_field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _from_numpy(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """Zero-copy Arrow array (``pa.array`` would import pandas: 0.3 s per child)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(arrow_type, values.size, [None, pa.py_buffer(values)])


@functools.cache
def _dictionary(name: str) -> pa.Array:
    import pyarrow as pa

    values = DICTIONARY_COLUMNS[name]
    data = "".join(values).encode()
    offsets = np.concatenate([[0], np.cumsum([len(v.encode()) for v in values])]).astype(np.int32)
    return pa.Array.from_buffers(
        pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _hash_block(hasher: Any, columns: dict[str, np.ndarray]) -> None:
    """Feed one block's canonical bytes: fixed column order, dictionary columns as codes."""
    for name in transaction_schema().names:
        values = columns[name]
        if name in DICTIONARY_COLUMNS or values.dtype == np.bool_:
            values = values.astype(np.uint8, copy=False)
        hasher.update(np.ascontiguousarray(values).data)


def iter_batches(
    world: World,
    index: int,
    rows_per_chunk: int,
    hasher: Any = None,
    tally: np.ndarray | None = None,
) -> Iterator[pa.Table]:
    """Tables of about ``rows_per_chunk`` rows (whole blocks, or slices of one block).

    Feeds each block to ``hasher`` and adds its rows per scenario code to ``tally``.
    """
    import pyarrow as pa

    schema = transaction_schema()
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for block in range(blocks_in_file(world.spec, index)):
        columns = generate_block(world, index, block)
        if hasher is not None:
            _hash_block(hasher, columns)
        if tally is not None:
            tally += np.bincount(columns["fraud_scenario"], minlength=len(SCENARIOS))
        batch = _to_batch(columns, schema)
        del columns
        if rows_per_chunk < BLOCK_ROWS:
            for offset in range(0, batch.num_rows, rows_per_chunk):
                yield pa.Table.from_batches([batch.slice(offset, rows_per_chunk)])
            continue
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows + BLOCK_ROWS > rows_per_chunk:
            yield pa.Table.from_batches(pending)
            pending, pending_rows = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def open_out(out: str) -> Storage:
    """``out`` as a Storage: a path or s3:// URL, else the name of a storage block.

    Block names are resolved here, in the writer, so credentials never travel as task
    parameters; only then is prefect imported.
    """
    from headroom.storage import is_location, open_storage

    if is_location(out):
        return open_storage(out)
    from blocks.storage import resolve_out

    return resolve_out(out)


def check_free_space(storage: Storage, needed_bytes: int) -> None:
    """Raise OSError naming both figures when a local ``out`` has too little free space."""
    import shutil

    if not storage.is_local:
        return  # object stores report no free space; a failed upload cleans up after itself
    free = shutil.disk_usage(storage.root).free
    if free < needed_bytes:
        raise OSError(
            f"out: {storage.root} has {free / 1e9:.2f} GB free, the dataset needs about "
            f"{needed_bytes / 1e9:.2f} GB more"
        )


def part_path(index: int) -> str:
    """Relative path of transaction file ``index``."""
    return f"transactions/part-{index:05d}.parquet"


def sidecar_path(index: int) -> str:
    """Relative path of the manifest entry a finished file leaves behind."""
    return f"_parts/part-{index:05d}.json"


_DELTA_COLUMNS = ("transaction_id", "ts", "customer_id", "device_id", "merchant_id")


def writer_options(compression: str) -> dict[str, Any]:
    """ParquetWriter options shared by the generator and the encode-only benchmark."""
    return {
        "compression": compression,
        "use_dictionary": list(DICTIONARY_COLUMNS),
        # Ids and times only grow, so deltas pack into a few bits; the random ids still pack
        # tighter and faster than plain + zstd (measured: 196 vs 276 ns a row).
        "column_encoding": {name: "DELTA_BINARY_PACKED" for name in _DELTA_COLUMNS},
        "write_statistics": ["transaction_id", "ts"],  # readers prune by time
    }


def write_transaction_file(
    out: str,
    spec: dict[str, Any],
    index: int,
    rows_per_chunk: int = 262_144,
    extra_bytes_per_row: int = 0,
) -> dict[str, Any]:
    """Generate transaction file ``index`` of the dataset ``spec`` into ``out``; its entry.

    Streams row groups of about ``rows_per_chunk`` rows into a temporary file that is
    published only once complete. ``extra_bytes_per_row`` makes each buffered row hold that
    much more memory (a drill for a wrong per-row estimate); it does not change the output.
    """
    import pyarrow.parquet as pq

    if rows_per_chunk < 1:
        raise BadInput(f"rows_per_chunk: must be at least 1, got {rows_per_chunk}")
    dataset = DatasetSpec.from_dict(spec)
    rows = dataset.rows_in_file(index)
    storage = open_out(out)
    world = build_world(dataset)
    hasher = hashlib.sha256()
    tally = np.zeros(len(SCENARIOS), dtype=np.int64)
    relative = part_path(index)
    _remove_own_temporaries(storage, relative)
    min_ts = max_ts = None
    with storage.atomic_output(relative) as temporary:
        with pq.ParquetWriter(
            temporary,
            transaction_schema(),
            filesystem=storage.filesystem,
            **writer_options(dataset.compression),
        ) as writer:
            for table in iter_batches(world, index, rows_per_chunk, hasher, tally):
                ballast = _ballast(table.num_rows * extra_bytes_per_row)
                writer.write_table(table, row_group_size=table.num_rows)
                del ballast
                ts = table.column("ts")
                min_ts = min_ts if min_ts is not None else ts[0].value
                max_ts = ts[-1].value
    entry = {
        "index": index,
        "path": relative,
        "rows": rows,
        "bytes": storage.size(relative),
        "min_ts": _iso(min_ts),
        "max_ts": _iso(max_ts),
        "min_ts_ms": min_ts,
        "max_ts_ms": max_ts,
        "fraud": {name: int(tally[i]) for i, name in enumerate(SCENARIOS) if i},
        "checksum": "sha256:" + hasher.hexdigest(),
        "fingerprint": fingerprint(dataset),
    }
    storage.write_json(sidecar_path(index), entry)
    log.info("wrote %s: %d rows, %d bytes", relative, rows, entry["bytes"])
    return entry


def _remove_own_temporaries(storage: Storage, relative: str) -> None:
    """Delete what a killed earlier attempt at this same file left (before a retry)."""
    import posixpath

    import pyarrow.fs as pafs

    from headroom.storage import TMP_MARK

    directory, name = posixpath.split(storage.path(relative))
    selector = pafs.FileSelector(directory, allow_not_found=True)
    for info in storage.filesystem.get_file_info(selector):
        if info.base_name.startswith(TMP_MARK) and info.base_name.endswith(f"-{name}"):
            storage.filesystem.delete_file(info.path)


def _ballast(n_bytes: int) -> np.ndarray | None:
    if n_bytes <= 0:
        return None
    ballast = np.empty(n_bytes, dtype=np.uint8)
    ballast[::4096] = 1  # touch every page so it counts as resident memory
    return ballast


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(ms))
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fingerprint(spec: DatasetSpec) -> str:
    """A short digest of everything that decides the content (resume only matching files)."""
    text = repr(sorted(spec.to_dict().items())) + f"|{GENERATOR}|{BLOCK_ROWS}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def content_checksum(table: pa.Table) -> str:
    """The checksum of a transaction file's rows as read back (independent of row groups)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    hasher = hashlib.sha256()
    for offset in range(0, table.num_rows, BLOCK_ROWS):
        piece = table.slice(offset, BLOCK_ROWS)
        columns: dict[str, np.ndarray] = {}
        for name in transaction_schema().names:
            column = piece.column(name)
            if name in DICTIONARY_COLUMNS:
                # Map whatever dictionary the reader produced back to the fixed codes.
                text = column.cast(pa.string()) if pa.types.is_dictionary(column.type) else column
                codes = pc.index_in(text, value_set=_dictionary(name))
                columns[name] = codes.to_numpy().astype(np.uint8)
            elif name == "ts":
                columns[name] = column.cast(pa.int64()).to_numpy()
            else:
                columns[name] = column.to_numpy()
        _hash_block(hasher, columns)
    return "sha256:" + hasher.hexdigest()


def file_checksum(path: str, filesystem: Any = None) -> str:
    """:func:`content_checksum` of a Parquet file."""
    import pyarrow.parquet as pq

    return content_checksum(pq.read_table(path, filesystem=filesystem))


# --------------------------------------------------------------------------------------------
# Manifest and resume.


def completed_entries(storage: Storage, spec: DatasetSpec) -> dict[int, dict[str, Any]]:
    """Files already finished for this spec: from the manifest and the per-file entries."""
    import pyarrow.fs as pafs

    mark = fingerprint(spec)
    found: dict[int, dict[str, Any]] = {}
    manifest = storage.read_json("manifest.json")
    if manifest and manifest.get("fingerprint") == mark:
        found.update({entry["index"]: entry for entry in manifest["files"]})
    selector = pafs.FileSelector(storage.path("_parts"), allow_not_found=True)
    for info in storage.filesystem.get_file_info(selector):
        if not (info.base_name.startswith("part-") and info.base_name.endswith(".json")):
            continue
        entry = storage.read_json(f"_parts/{info.base_name}")
        if entry and entry.get("fingerprint") == mark and entry["index"] not in found:
            found[entry["index"]] = entry
    # An entry counts only if its file is there with the recorded size.
    return {
        index: entry
        for index, entry in found.items()
        if index < spec.files and storage.size(entry["path"]) == entry["bytes"]
    }


def build_manifest(
    spec: DatasetSpec, entries: list[dict[str, Any]], reference: dict[str, int] | None = None
) -> dict[str, Any]:
    """The manifest document (fraud-schema.md) for the finished ``entries``."""
    files = sorted(
        ({k: v for k, v in e.items() if k != "fingerprint"} for e in entries),
        key=lambda e: e["index"],
    )
    fraud = {name: sum(e["fraud"][name] for e in files) for name in FRAUD_SCENARIOS}
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": GENERATOR,
        "seed": spec.seed,
        "start": spec.start,
        "end": spec.end,
        "transactions": spec.transactions,
        "transactions_per_file": spec.transactions_per_file,
        "file_count": spec.files,
        "complete": len(files) == spec.files,
        "rows": sum(e["rows"] for e in files),
        "bytes": sum(e["bytes"] for e in files),
        "fraud": fraud,
        "fraud_rows": sum(fraud.values()),
        "customers": "customers.parquet",
        "devices": "devices.parquet",
        "merchants": "merchants.parquet",
        "reference_rows": reference or {},
        "spec": spec.to_dict(),
        "fingerprint": fingerprint(spec),
        "files": files,
    }


def generate_dataset_local(
    out_dir: str | os.PathLike[str],
    *,
    transactions: int = 100_000,
    seed: int = 0,
    start: str | date = "2024-01-01",
    end: str | date = "2024-01-31",
    files: int = 4,
    fraud_rate: float = 0.008,
    compression: str = "zstd",
    customers: int | None = None,
    rows_per_chunk: int = 262_144,
) -> dict[str, Any]:
    """Generate a whole small dataset in this process (no Prefect); returns the manifest."""
    spec = plan_dataset(
        transactions=transactions,
        seed=seed,
        start=start,
        end=end,
        files=files,
        customers=customers,
        fraud_rate=fraud_rate,
        compression=compression,
    )
    out = os.fspath(out_dir)
    storage = open_out(out)
    reference = write_reference_tables(out, spec.to_dict())
    done = completed_entries(storage, spec)
    entries = [
        done.get(i) or write_transaction_file(out, spec.to_dict(), i, rows_per_chunk)
        for i in range(spec.files)
    ]
    manifest = build_manifest(spec, entries, reference)
    storage.write_json("manifest.json", manifest)
    return manifest
