"""ERCOT settlement point prices from MIS zips (one CSV each).

Day-ahead (report NP4-190, ``...DAMSPNP4190_csv.zip``): ``DeliveryDate,HourEnding,
SettlementPoint,SettlementPointPrice,DSTFlag``; real-time 15-minute (NP6-905,
``...SPPHLZNP6905_..._csv.zip``): ``DeliveryDate,DeliveryHour,DeliveryInterval,
SettlementPointName,SettlementPointType,SettlementPointPrice,DSTFlag``. Hours ending 1-24 in
Central prevailing time; ``DSTFlag`` is ``Y`` on the second (standard-time) copy of the
repeated hour. Prices may carry a leading space. No components: energy, congestion and loss
are null.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from flows.iso_lmp import base
from flows.iso_lmp.base import US_PER_MINUTE, IsoFormat, IsoParseError, Layout, Market

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

DA_COLUMNS = ("DeliveryDate", "HourEnding", "SettlementPoint", "SettlementPointPrice", "DSTFlag")
RT_COLUMNS = (
    "DeliveryDate",
    "DeliveryHour",
    "DeliveryInterval",
    "SettlementPointName",
    "SettlementPointType",
    "SettlementPointPrice",
    "DSTFlag",
)
PREFIX = "cdr.{report:08d}.0000000000000000"
REPORTS = {Market.DAY_AHEAD_HOURLY: 12331, Market.REAL_TIME_15_MIN: 12301}


def _point_types(names: pa.Array) -> pa.Array:
    """Day-ahead files carry no type: ERCOT's naming tells hubs and load zones apart."""
    import pyarrow.compute as pc

    return pc.if_else(
        pc.starts_with(names, "HB_"),
        "Trading Hub",
        pc.if_else(pc.starts_with(names, "LZ_"), "Load Zone", "Resource Node"),
    )


class Ercot(IsoFormat):
    """ERCOT day-ahead hourly and real-time 15-minute settlement point prices."""

    iso_id = "ERCOT"
    timezone = "America/Chicago"
    markets = (Market.DAY_AHEAD_HOURLY, Market.REAL_TIME_15_MIN)
    raw_columns = {Market.DAY_AHEAD_HOURLY: DA_COLUMNS, Market.REAL_TIME_15_MIN: RT_COLUMNS}
    rename = {
        "SettlementPoint": "location",
        "SettlementPointName": "location",
        "SettlementPointType": "location_type",
        "SettlementPointPrice": "lmp",
    }
    file_patterns = {
        Market.DAY_AHEAD_HOURLY: r"cdr\.00012331\.0{16}\.(?P<day>\d{8})\.\d+\.DAMSPNP4190_csv\.zip",
        Market.REAL_TIME_15_MIN: (
            r"cdr\.00012301\.0{16}\.\d{8}\.\d+\.SPPHLZNP6905_(?P<day>\d{8})_\d{4}_csv\.zip"
        ),
    }
    time_column = "HourEnding"

    def day_of(self, name: str) -> date | None:
        """Day-ahead files are named by their posting day, the day before delivery."""
        day = super().day_of(name)
        if day is not None and self.market_of(name) is Market.DAY_AHEAD_HOURLY:
            return day + timedelta(days=1)
        return day

    def file_name(self, market: Market, day: date) -> str:
        """The MIS name of a delivery day's file (day-ahead: posted the day before)."""
        prefix = PREFIX.format(report=REPORTS[market])
        if market is Market.DAY_AHEAD_HOURLY:
            posted = day - timedelta(days=1)
            return f"{prefix}.{posted:%Y%m%d}.123000.DAMSPNP4190_csv.zip"
        return f"{prefix}.{day:%Y%m%d}.001502.SPPHLZNP6905_{day:%Y%m%d}_0015_csv.zip"

    def source(self, path: Path) -> AbstractContextManager[BinaryIO]:
        return base.zip_member(path)

    def layout(self, path: Path, market: Market, source: BinaryIO) -> Layout | None:
        """The header, read from the zip opened a second time: the stream is read once."""
        with base.zip_member(path) as member:
            return super().layout(path, market, member)

    def batches(
        self, path: Path, market: Market, source: BinaryIO, layout: Layout, chunk_rows: int
    ) -> Iterator[tuple[Any, pa.RecordBatch]]:
        return base.guard_zip(path, super().batches(path, market, source, layout, chunk_rows))

    def csv_options(self, market: Market) -> dict[str, Any]:
        hour, location = _hour_and_location(market)
        return {
            "bytes_per_row": 60,
            "string_columns": ("DeliveryDate", hour, location, "DSTFlag"),
            "float_columns": ("SettlementPointPrice",),
            "text_prices": True,  # prices may carry a leading space
        }

    def canonical_rows(
        self, path: Path, market: Market, batch: pa.RecordBatch, lines: Any, context: Any
    ) -> pa.Table:
        import numpy as np
        import pyarrow.compute as pc

        hour_column, location = _hour_and_location(market)
        hours = _hours(path, batch.column(hour_column), market, lines, hour_column)
        flags = _dst_flags(path, batch.column("DSTFlag"), lines)
        days = base.epoch_days(
            path, batch.column("DeliveryDate"), "%m/%d/%Y", "DeliveryDate", lines
        )
        utc = base.hour_ending_starts(path, days, hours, flags, self.zone, lines, hour_column)
        if market is Market.REAL_TIME_15_MIN:
            interval = pc.cast(batch.column("DeliveryInterval"), "int64").to_numpy()
            if ((interval < 1) | (interval > 4)).any():
                at = int(np.flatnonzero((interval < 1) | (interval > 4))[0])
                raise IsoParseError(
                    path, f"bad interval {interval[at]}", lines + at, "DeliveryInterval"
                )
            utc = utc + (interval - 1) * 15 * US_PER_MINUTE
            types = batch.column("SettlementPointType")
        else:
            types = _point_types(batch.column(location))
        return base.canonical_table(
            self.iso_id,
            market,
            self.zone,
            utc,
            batch.column(location),
            types,
            base.prices(path, batch.column("SettlementPointPrice"), "SettlementPointPrice", lines),
            None,
            None,
            None,
            np.arange(lines, lines + batch.num_rows),
        )


def _hour_and_location(market: Market) -> tuple[str, str]:
    """The hour and settlement point columns of a market's files."""
    if market is Market.REAL_TIME_15_MIN:
        return "DeliveryHour", "SettlementPointName"
    return "HourEnding", "SettlementPoint"


def _hours(path: Path, labels: pa.Array, market: Market, line: int, column: str) -> np.ndarray:
    """Hour numbers: real-time ``DeliveryHour`` is one, day-ahead ``HourEnding`` is ``HH:00``."""
    import pyarrow.compute as pc

    text = pc.utf8_trim_whitespace(labels)
    digits = text if market is Market.REAL_TIME_15_MIN else pc.utf8_slice_codeunits(text, 0, 2)
    try:
        return pc.cast(digits, "int64").to_numpy()
    except Exception:
        values = text.to_pylist()
        at = next(i for i, v in enumerate(values) if not (v or "")[:2].isdigit())
        raise IsoParseError(path, f"bad hour {values[at]!r}", line + at, column) from None


def _dst_flags(path: Path, flags: pa.Array, line: int) -> np.ndarray:
    """Whether each row is the second (standard-time) copy of the repeated hour."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    flags = pc.utf8_trim_whitespace(flags)
    wrong = pc.invert(pc.is_in(flags, value_set=pa.array(["Y", "N"])))
    if pc.any(wrong).as_py():
        at = int(np.flatnonzero(wrong.to_numpy(False))[0])
        raise IsoParseError(path, f"bad DSTFlag {flags[at]}", line + at, "DSTFlag")
    return pc.equal(flags, "Y").to_numpy(False)
