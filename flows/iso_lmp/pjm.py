"""PJM Data Miner hourly LMPs (``da_hrl_lmps``, ``rt_hrl_lmps``) saved as CSV per day.

Columns ``datetime_beginning_utc, datetime_beginning_ept, pnode_id, pnode_name, voltage,
equipment, type, zone, system_energy_price_da, total_lmp_da, congestion_price_da,
marginal_loss_price_da, row_is_current, version_nbr`` (``_rt`` suffixes for real time);
timestamps like ``1/15/2024 5:00:00 AM``. The UTC column is used; ``version_nbr`` is the
revision (the later one wins when the same node and hour appear twice).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from flows.iso_lmp.base import (
    IsoFormat,
    IsoParseError,
    Market,
    canonical_table,
    csv_batches,
    first_lines,
    parse_times,
    prices,
    split_header,
)

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

    def read(self, path: Path, market: Market, chunk_rows: int) -> Iterator[pa.Table]:
        """Canonical rows of one PJM file, in file order."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        columns = self.raw_columns[market]
        header = first_lines(path, 1)
        if not header:
            raise IsoParseError(path, "empty file", 1)
        self.check_header(path, split_header(header[0]), columns, 1)
        suffix = self.suffix[market]
        price_columns = [c for c in columns if c.endswith("_" + suffix)]
        for start, batch in csv_batches(
            path,
            path,
            skip_rows=0,
            column_names=None,
            chunk_rows=chunk_rows,
            bytes_per_row=160,
            string_columns=("datetime_beginning_utc", "pnode_id", "type"),
            float_columns=price_columns,
            include_columns=(
                "datetime_beginning_utc",
                "pnode_id",
                "type",
                *price_columns,
                "version_nbr",
            ),
        ):
            line = start + 2
            utc = parse_times(
                path,
                batch.column("datetime_beginning_utc"),
                TIME_FORMAT,
                "datetime_beginning_utc",
                line,
            )
            version = batch.column("version_nbr")
            if not pa.types.is_integer(version.type):
                raise IsoParseError(path, "non-integer version_nbr", line, "version_nbr")
            values = {c: prices(path, batch.column(c), c, line) for c in price_columns}
            yield canonical_table(
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
