"""The world of a fraud dataset: customers, devices, merchants and fraud windows.

All of it is drawn from the seed alone, vectorised, in seconds: the compact lookup arrays
the transaction writers need (:class:`World`) are built once per dataset and machine and
mapped from a local cache by every writer (:mod:`flows.fraud_synth.world_cache`), never read
from the output, and the reference writer turns the full customer columns into
``customers.parquet``, ``devices.parquet`` and ``merchants.parquet`` (:func:`reference_tables`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np

from flows.fraud_synth.spec import (
    CATEGORIES,
    DAY_MS,
    DEVICE_KINDS,
    HOUR_MS,
    NIGHT_HOURS,
    PROFILES,
    DatasetSpec,
)

if TYPE_CHECKING:
    import pyarrow as pa

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
# Share of fraud rows per scenario (amount_outlier, compromised_device, account_takeover,
# card_testing).
SCENARIO_SHARE = np.array([0.2, 0.3, 0.3, 0.2])
BURST_MIN, BURST_MAX = 4, 16
_CITIES = 40
NORMAL_BITS = 12  # resolution of the tabled normal draws (amounts, locations)
_LAT_RANGE, _LON_RANGE = (25.0, 49.0), (-124.0, -67.0)


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
class Customers:
    """Per-customer columns of the reference table: the first draws of the world's stream.

    Only the reference writer keeps them; a transaction writer needs a compact
    :attr:`World.customer_record` instead, so its memory does not grow with these columns.
    """

    home_lat: np.ndarray  # float32
    home_lon: np.ndarray
    profile: np.ndarray  # uint8
    mean_amount: np.ndarray  # float64
    std_amount: np.ndarray
    rate: np.ndarray  # float64: mean transactions per day
    device_offset: np.ndarray  # int64: the customer's first device id
    device_count: np.ndarray  # uint8


@dataclass
class World:
    """The lookup arrays every transaction file needs (read-only), a function of the spec."""

    spec: DatasetSpec
    # float32 [customer, 4]: home lat, home lon, amount scale, and (as int32 bits) device
    # offset << 5 | (device count - 1) << 3 | profile. One 16-byte gather per row instead of
    # six separate lookups, each a cache miss.
    customer_record: np.ndarray = field(repr=False)
    customer_pool: np.ndarray = field(repr=False)  # int32: customers repeated by volume
    customer_devices: int  # devices owned by customers: ids [0, customer_devices)
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
    takeover_amount: np.ndarray  # the victim's mean amount per takeover
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


@functools.cache
def _normal_quantiles() -> np.ndarray:
    """Standard normal quantiles at the midpoints of 2**NORMAL_BITS equal slices.

    A table lookup by random bits replaces drawing normals, which costs several times as
    much, exact in distribution up to the slicing, which is finer than the rounding to cents.
    """
    from statistics import NormalDist

    width = 1 << NORMAL_BITS
    unit = NormalDist()
    return np.array([unit.inv_cdf((i + 0.5) / width) for i in range(width)])


@functools.cache
def amount_table() -> np.ndarray:
    """float64 [category * 2**NORMAL_BITS]: the lognormal amount at each normal quantile."""
    z = _normal_quantiles()
    return np.exp(np.log(_AMOUNT_MEDIAN)[:, None] + _AMOUNT_SIGMA[:, None] * z).ravel()


@functools.cache
def location_noise() -> np.ndarray:
    """float32 offsets (degrees) of a purchase from home, at each normal quantile."""
    return (_normal_quantiles() * 0.05).astype(np.float32)


def uniform_points(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    lat = rng.uniform(*_LAT_RANGE, n).astype(np.float32)
    lon = rng.uniform(*_LON_RANGE, n).astype(np.float32)
    return lat, lon


def _draw_customers(
    spec: DatasetSpec,
) -> tuple[np.random.Generator, Customers, tuple[np.ndarray, np.ndarray]]:
    """The world's stream, its customers (its first draws) and the city centres."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x5EED]))
    n = spec.customers
    city_lat, city_lon = uniform_points(rng, _CITIES)
    city = rng.integers(0, _CITIES, n)
    profile = rng.choice(len(PROFILES), n, p=_PROFILE_SHARE).astype(np.uint8)
    spread = np.where(profile == PROFILES.index("rural"), 1.2, 0.25).astype(np.float32)
    home_lat = city_lat[city] + rng.standard_normal(n, dtype=np.float32) * spread
    home_lon = city_lon[city] + rng.standard_normal(n, dtype=np.float32) * spread
    del city, spread
    mean_amount = np.round(40.0 * _PROFILE_AMOUNT[profile] * rng.lognormal(0, 0.35, n), 2)
    std_amount = np.round(mean_amount * rng.uniform(0.3, 0.8, n), 2)
    rate = _PROFILE_RATE[profile] * rng.lognormal(0, 0.45, n)
    days = (spec.end_ms - spec.start_ms) / DAY_MS
    # Scale the customers' rates so they add up to the dataset's actual volume.
    rate *= spec.transactions / (days * rate.sum())
    device_count = (1 + np.minimum(rng.poisson(1.3, n), 3)).astype(np.uint8)
    device_offset = np.zeros(n, dtype=np.int64)
    np.cumsum(device_count[:-1], out=device_offset[1:])
    customers = Customers(
        home_lat=home_lat.astype(np.float32, copy=False),
        home_lon=home_lon.astype(np.float32, copy=False),
        profile=profile,
        mean_amount=mean_amount,
        std_amount=std_amount,
        rate=rate,
        device_offset=device_offset,
        device_count=device_count,
    )
    return rng, customers, (city_lat, city_lon)


def _customer_record(customers: Customers) -> np.ndarray:
    """The packed per-customer record of :attr:`World.customer_record`."""
    record = np.empty((customers.profile.size, 4), dtype=np.float32)
    record[:, 0] = customers.home_lat
    record[:, 1] = customers.home_lon
    record[:, 2] = customers.mean_amount / customers.mean_amount.mean()
    # Device ids stay below 2**26 (5 M customers x 4 devices), so the packing fits int32.
    record.view(np.int32)[:, 3] = (
        (customers.device_offset << 5)
        | ((customers.device_count.astype(np.int64) - 1) << 3)
        | customers.profile
    )
    return record


@functools.lru_cache(maxsize=2)
def build_world(spec: DatasetSpec) -> World:
    """Devices, merchants, fraud windows and the customers' record: vectorised, from the spec.

    The parts draw from one stream in a fixed order (customers, pool, merchants, time curve,
    fraud windows), so the world is a function of the spec."""
    rng, customers, city = _draw_customers(spec)
    customer_devices = int(customers.device_offset[-1] + customers.device_count[-1])
    return World(
        spec=spec,
        customer_record=_customer_record(customers),
        customer_pool=_customer_pool(rng, customers),
        customer_devices=customer_devices,
        **_merchants(rng, spec.merchants, city),
        **_time_curve(rng, spec),
        **_fraud_windows(rng, spec, customers, customer_devices),
        category_table=_quantised_table(_CATEGORY_WEIGHTS, 1024),
        channel_table=_quantised_table(_CHANNEL_WEIGHTS + 1e-12, 256),
    )


def _customer_pool(rng: np.random.Generator, customers: Customers) -> np.ndarray:
    """Customer numbers, each repeated in proportion to its rate: a uniform pick from the pool
    picks customers by how often they buy."""
    n = customers.rate.size
    pool_size = int(min(1 << 24, max(4 * n, 1 << 16)))
    expected = customers.rate / customers.rate.sum() * pool_size
    copies = np.floor(expected + rng.random(n)).astype(np.int64)  # unbiased rounding
    del expected
    customer_pool = np.repeat(np.arange(n, dtype=np.int32), copies)
    if customer_pool.size == 0:
        return np.arange(n, dtype=np.int32)
    return customer_pool


def _merchants(
    rng: np.random.Generator, m: int, city: tuple[np.ndarray, np.ndarray]
) -> dict[str, np.ndarray]:
    """The merchants' fields of :class:`World`: categories (sorted), places, online ones."""
    city_lat, city_lon = city
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
    return {
        "merchant_category": merchant_category,
        "merchant_lat": merchant_lat.astype(np.float32),
        "merchant_lon": merchant_lon.astype(np.float32),
        "category_offset": category_offset,
        "category_count": category_count,
        "online_merchants": np.flatnonzero(online).astype(np.int64),
    }


def _time_curve(rng: np.random.Generator, spec: DatasetSpec) -> dict[str, Any]:
    """The hourly volume curve as a CDF over hour edges, and the night's share of a day."""
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
    return {
        "time_cdf": time_cdf,
        "time_edges_ms": spec.start_ms + np.arange(hours + 1, dtype=np.int64) * HOUR_MS,
        "night_share": float(_HOUR_WEIGHTS[:NIGHT_HOURS].sum() / _HOUR_WEIGHTS.sum()),
    }


def _fraud_windows(
    rng: np.random.Generator, spec: DatasetSpec, customers: Customers, customer_devices: int
) -> dict[str, Any]:
    """Fraudster devices and the windows of stolen devices and account takeovers."""
    n = spec.customers
    fraud_device_count = max(16, n // 200)
    device_windows = Windows.spread(
        spec.start_ms, spec.end_ms, 28 * DAY_MS, max(1, customer_devices // 2000)
    )
    device_victims = rng.integers(0, customer_devices, device_windows.count)
    device_owners = np.searchsorted(customers.device_offset, device_victims, side="right") - 1
    takeover_windows = Windows.spread(spec.start_ms, spec.end_ms, 14 * DAY_MS, max(1, n // 1000))
    takeover_victims = rng.integers(0, n, takeover_windows.count)
    takeover_devices = customer_devices + rng.integers(
        0, fraud_device_count, takeover_windows.count
    )
    window_lat, window_lon = uniform_points(rng, max(device_windows.count, takeover_windows.count))
    return {
        "fraud_device_first": customer_devices,
        "fraud_device_count": fraud_device_count,
        "device_windows": device_windows,
        "device_victims": device_victims,
        "device_owners": device_owners,
        "takeover_windows": takeover_windows,
        "takeover_victims": takeover_victims,
        "takeover_amount": customers.mean_amount[takeover_victims],
        "takeover_devices": takeover_devices,
        "window_lat": window_lat,
        "window_lon": window_lon,
    }


def reference_tables(world: World) -> Iterator[tuple[str, pa.Table]]:
    """customers, devices and merchants as Arrow tables, one at a time.

    Built from numpy buffers without ``pa.array``, which would import pandas (a large
    import), and one table at a time, so the reference writer holds at most one of them.
    """
    import pyarrow as pa

    from flows.common.arrow import column, dictionary, table

    _, people, _ = _draw_customers(world.spec)  # re-drawn here so writers need not keep them
    n = world.spec.customers
    yield (
        "customers",
        table(
            {
                "customer_id": column(np.arange(n, dtype=np.int64), pa.int64()),
                "home_latitude": column(people.home_lat, pa.float32()),
                "home_longitude": column(people.home_lon, pa.float32()),
                "profile": dictionary(people.profile, PROFILES),
                "mean_amount": column(people.mean_amount, pa.float64()),
                "std_amount": column(people.std_amount, pa.float64()),
                "mean_tx_per_day": column(people.rate.astype(np.float32), pa.float32()),
            }
        ),
    )
    owners = np.repeat(np.arange(n, dtype=np.int64), people.device_count)
    rank = np.arange(owners.size) - np.repeat(people.device_offset, people.device_count)
    kinds = np.where(rank == 0, 0, 1 + (rank - 1) % 3)
    del people, rank
    fraudsters = world.fraud_device_count
    yield (
        "devices",
        table(
            {
                "device_id": column(np.arange(world.devices, dtype=np.int64), pa.int64()),
                # Fraudster devices belong to no customer: owner -1.
                "customer_id": column(
                    np.concatenate([owners, np.full(fraudsters, -1, dtype=np.int64)]), pa.int64()
                ),
                "kind": dictionary(
                    np.concatenate([kinds, np.full(fraudsters, DEVICE_KINDS.index("fraudster"))]),
                    DEVICE_KINDS,
                ),
            }
        ),
    )
    del owners, kinds
    yield (
        "merchants",
        table(
            {
                "merchant_id": column(np.arange(world.spec.merchants, dtype=np.int64), pa.int64()),
                "merchant_category": dictionary(world.merchant_category, CATEGORIES),
                "latitude": column(world.merchant_lat, pa.float32()),
                "longitude": column(world.merchant_lon, pa.float32()),
            }
        ),
    )
