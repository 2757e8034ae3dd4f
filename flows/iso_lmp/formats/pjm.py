"""PJM Data Miner hourly LMPs (``da_hrl_lmps``, ``rt_hrl_lmps``) saved as CSV per day.

Columns ``datetime_beginning_utc, datetime_beginning_ept, pnode_id, pnode_name, voltage,
equipment, type, zone, system_energy_price_da, total_lmp_da, congestion_price_da,
marginal_loss_price_da, row_is_current, version_nbr`` (``_rt`` suffixes for real time);
timestamps like ``1/15/2024 5:00:00 AM``. The UTC column is used; ``version_nbr`` is the
revision (the later one wins when the same node and hour appear twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.iso_lmp import base
from flows.iso_lmp.base import IsoFormat, IsoParseError, Market

if TYPE_CHECKING:
    import pyarrow as pa

TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def _columns(suffix: str) -> tuple[str, ...]:
    return (
        "datetime_beginning_utc",
        "datetime_beginning_ept",
        "pnode_id",
        "pnode_name",
        "voltage",
        "equipment",
        "type",
        "zone",
        f"system_energy_price_{suffix}",
        f"total_lmp_{suffix}",
        f"congestion_price_{suffix}",
        f"marginal_loss_price_{suffix}",
        "row_is_current",
        "version_nbr",
    )


class Pjm(IsoFormat):
    """PJM day-ahead and real-time hourly LMPs."""

    iso_id = "PJM"
    timezone = "America/New_York"
    markets = (Market.DAY_AHEAD_HOURLY, Market.REAL_TIME_HOURLY)
    suffix = {Market.DAY_AHEAD_HOURLY: "da", Market.REAL_TIME_HOURLY: "rt"}
    raw_columns = {m: _columns(s) for m, s in suffix.items()}
    rename = {
        "pnode_id": "location",
        "type": "location_type",
        "total_lmp": "lmp",
        "system_energy_price": "energy",
        "congestion_price": "congestion",
        "marginal_loss_price": "loss",
    }
    file_patterns = {
        Market.DAY_AHEAD_HOURLY: r"da_hrl_lmps_(?P<day>\d{8})\.csv",
        Market.REAL_TIME_HOURLY: r"rt_hrl_lmps_(?P<day>\d{8})\.csv",
    }
    name_templates = {
        Market.DAY_AHEAD_HOURLY: "da_hrl_lmps_{day:%Y%m%d}.csv",
        Market.REAL_TIME_HOURLY: "rt_hrl_lmps_{day:%Y%m%d}.csv",
    }
    feeds = {Market.DAY_AHEAD_HOURLY: "da_hrl_lmps", Market.REAL_TIME_HOURLY: "rt_hrl_lmps"}
    time_column = "datetime_beginning_utc"

    def _prices(self, market: Market) -> list[str]:
        suffix = "_" + self.suffix[market]
        return [c for c in self.raw_columns[market] if c.endswith(suffix)]

    def csv_options(self, market: Market) -> dict[str, Any]:
        price_columns = self._prices(market)
        return {
            "bytes_per_row": 160,
            "string_columns": ("datetime_beginning_utc", "pnode_id", "type"),
            "float_columns": price_columns,
            "include_columns": (
                "datetime_beginning_utc",
                "pnode_id",
                "type",
                *price_columns,
                "version_nbr",
            ),
        }

    def canonical_rows(
        self, path: Path, market: Market, batch: pa.RecordBatch, line: int, context: Any
    ) -> pa.Table:
        """Rows in file order; version_nbr is the revision."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        suffix = self.suffix[market]
        utc = base.parse_times(
            path,
            batch.column("datetime_beginning_utc"),
            TIME_FORMAT,
            "datetime_beginning_utc",
            line,
        )
        version = batch.column("version_nbr")
        if not pa.types.is_integer(version.type):
            raise IsoParseError(path, "non-integer version_nbr", line, "version_nbr")
        values = {c: base.prices(path, batch.column(c), c, line) for c in self._prices(market)}
        return base.canonical_table(
            self.iso_id,
            market,
            self.zone,
            utc,
            batch.column("pnode_id"),
            batch.column("type"),
            values[f"total_lmp_{suffix}"],
            values[f"system_energy_price_{suffix}"],
            values[f"congestion_price_{suffix}"],
            values[f"marginal_loss_price_{suffix}"],
            np.arange(line, line + batch.num_rows, dtype=np.int64),
            revision=pc.fill_null(version, 0).to_numpy(zero_copy_only=False),
        )
