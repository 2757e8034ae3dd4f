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
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from flows.iso_lmp.base import (
    US_PER_MINUTE,
    IsoFormat,
    IsoParseError,
    Market,
    canonical_table,
    csv_batches,
    epoch_days,
    first_lines,
    guard_zip,
    hour_ending_starts,
    open_zip_csv,
    prices,
    split_header,
)

if TYPE_CHECKING:
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

    def read(self, path: Path, market: Market, chunk_rows: int) -> Iterator[pa.Table]:
        """Canonical rows of one ERCOT zip."""
        archive, member = open_zip_csv(path)
        with archive, member:
            header = first_lines(path, 1, source=member)
        columns = self.raw_columns[market]
        if not header:
            raise IsoParseError(path, "empty CSV in zip", 1)
        self.check_header(path, split_header(header[0]), columns, 1)
        archive, member = open_zip_csv(path)
        with archive, member:
            yield from guard_zip(path, self._rows(path, market, member, chunk_rows))

    def _rows(self, path: Path, market: Market, member, chunk_rows: int):
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        real_time = market is Market.REAL_TIME_15_MIN
        hour_column = "DeliveryHour" if real_time else "HourEnding"
        location = "SettlementPointName" if real_time else "SettlementPoint"
        for start, batch in csv_batches(
            member,
            path,
            skip_rows=0,
            column_names=None,
            chunk_rows=chunk_rows,
            bytes_per_row=60,
            string_columns=("DeliveryDate", hour_column, location, "DSTFlag"),
            float_columns=("SettlementPointPrice",),
            text_prices=True,  # prices may carry a leading space
        ):
            line = start + 2
            text = pc.utf8_trim_whitespace(batch.column(hour_column))
            digits = pc.utf8_slice_codeunits(text, 0, 2) if not real_time else text
            try:
                hours = pc.cast(digits, "int64").to_numpy()
            except Exception:
                values = text.to_pylist()
                at = next(i for i, v in enumerate(values) if not (v or "")[:2].isdigit())
                raise IsoParseError(
                    path, f"bad hour {values[at]!r}", line + at, hour_column
                ) from None
            flags = pc.utf8_trim_whitespace(batch.column("DSTFlag"))
            wrong = pc.invert(pc.is_in(flags, value_set=pa.array(["Y", "N"])))
            if pc.any(wrong).as_py():
                at = int(np.flatnonzero(wrong.to_numpy(False))[0])
                raise IsoParseError(path, f"bad DSTFlag {flags[at]}", line + at, "DSTFlag")
            days = epoch_days(path, batch.column("DeliveryDate"), "%m/%d/%Y", "DeliveryDate", line)
            utc = hour_ending_starts(
                path,
                days,
                hours,
                pc.equal(flags, "Y").to_numpy(False),
                self.zone,
                line,
                hour_column,
            )
            if real_time:
                interval = pc.cast(batch.column("DeliveryInterval"), "int64").to_numpy()
                if ((interval < 1) | (interval > 4)).any():
                    at = int(np.flatnonzero((interval < 1) | (interval > 4))[0])
                    raise IsoParseError(
                        path, f"bad interval {interval[at]}", line + at, "DeliveryInterval"
                    )
                utc = utc + (interval - 1) * 15 * US_PER_MINUTE
                types = batch.column("SettlementPointType")
            else:
                types = _point_types(batch.column(location))
            yield canonical_table(
                self.iso_id,
                market,
                self.zone,
                utc,
                batch.column(location),
                types,
                prices(path, batch.column("SettlementPointPrice"), "SettlementPointPrice", line),
                None,
                None,
                None,
                np.arange(line, line + batch.num_rows),
            )
