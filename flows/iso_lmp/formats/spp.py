"""SPP LMPs by settlement location: day-ahead ``DA-LMP-SL-YYYYMMDD0100.csv`` and the daily
real-time balancing roll-up ``RTBM-LMP-DAILY-SL-YYYYMMDD.csv`` (5-minute intervals).

Columns ``Interval,GMTIntervalEnd,Settlement Location,Pnode,LMP,MLC,MCC,MEC`` (newer files
add ``BAA``), timestamps ``MM/DD/YYYY HH:MM:SS``. ``Interval`` is the local interval end and
ambiguous on the fall-back day; ``GMTIntervalEnd`` (UTC) is used. Energy is the published MEC.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.iso_lmp import base
from flows.iso_lmp.base import US_PER_MINUTE, IsoFormat, Market

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = ("Interval", "GMTIntervalEnd", "Settlement Location", "Pnode", "LMP", "MLC", "MCC", "MEC")
OPTIONAL = ("BAA",)
PRICES = ("LMP", "MLC", "MCC", "MEC")
TIME_FORMAT = "%m/%d/%Y %H:%M:%S"


class Spp(IsoFormat):
    """SPP day-ahead hourly and real-time 5-minute settlement-location LMPs."""

    iso_id = "SPP"
    timezone = "America/Chicago"
    markets = (Market.DAY_AHEAD_HOURLY, Market.REAL_TIME_5_MIN)
    raw_columns = {m: COLUMNS for m in markets}
    optional_columns = OPTIONAL
    rename = {
        "Settlement Location": "location",
        "LMP": "lmp",
        "MEC": "energy",
        "MCC": "congestion",
        "MLC": "loss",
    }
    file_patterns = {
        Market.DAY_AHEAD_HOURLY: r"DA-LMP-SL-(?P<day>\d{8})0100\.csv",
        Market.REAL_TIME_5_MIN: r"RTBM-LMP-DAILY-SL-(?P<day>\d{8})\.csv",
    }
    name_templates = {
        Market.DAY_AHEAD_HOURLY: "DA-LMP-SL-{day:%Y%m%d}0100.csv",
        Market.REAL_TIME_5_MIN: "RTBM-LMP-DAILY-SL-{day:%Y%m%d}.csv",
    }
    time_column = "GMTIntervalEnd"

    def csv_options(self, market: Market) -> dict[str, Any]:
        return {
            "bytes_per_row": 90,
            "string_columns": ("GMTIntervalEnd", "Settlement Location"),
            "float_columns": PRICES,
            "include_columns": ("GMTIntervalEnd", "Settlement Location", *PRICES),
        }

    def canonical_rows(
        self, path: Path, market: Market, batch: pa.RecordBatch, line: int, context: Any
    ) -> pa.Table:
        """The interval start is GMTIntervalEnd minus the market's interval."""
        import numpy as np

        end = base.parse_times(
            path, batch.column("GMTIntervalEnd"), TIME_FORMAT, "GMTIntervalEnd", line
        )
        return base.canonical_table(
            self.iso_id,
            market,
            self.zone,
            end - market.minutes * US_PER_MINUTE,
            batch.column("Settlement Location"),
            "Settlement Location",
            base.prices(path, batch.column("LMP"), "LMP", line),
            base.prices(path, batch.column("MEC"), "MEC", line),
            base.prices(path, batch.column("MCC"), "MCC", line),
            base.prices(path, batch.column("MLC"), "MLC", line),
            np.arange(line, line + batch.num_rows, dtype=np.int64),
        )
