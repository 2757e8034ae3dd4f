"""NYISO day-ahead LBMPs: ``YYYYMMDDdamlbmp_zone.csv`` and ``YYYYMMDDdamlbmp_gen.csv``.

Columns ``"Time Stamp","Name","PTID","LBMP ($/MWHr)","Marginal Cost Losses ($/MWHr)",
"Marginal Cost Congestion ($/MWHr)"``; the stamp is the interval start in Eastern
prevailing time. On the fall-back day 01:00 appears twice per location, in time order, with
no flag: the second copy of a location is standard time. NYISO's published congestion has
the opposite sign (LBMP = energy + losses - congestion): it is negated here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.iso_lmp import base
from flows.iso_lmp.base import IsoFormat, Market

if TYPE_CHECKING:
    import pyarrow as pa

LBMP, LOSSES, CONGESTION = (
    "LBMP ($/MWHr)",
    "Marginal Cost Losses ($/MWHr)",
    "Marginal Cost Congestion ($/MWHr)",
)
COLUMNS = ("Time Stamp", "Name", "PTID", LBMP, LOSSES, CONGESTION)
TIME_FORMAT = "%m/%d/%Y %H:%M"
LOCATION_TYPES = {"zone": "Zone", "gen": "Generator"}


class Nyiso(IsoFormat):
    """NYISO day-ahead zonal and generator LBMPs."""

    iso_id = "NYISO"
    timezone = "America/New_York"
    markets = (Market.DAY_AHEAD_HOURLY,)
    raw_columns = {Market.DAY_AHEAD_HOURLY: COLUMNS}
    rename = {"Name": "location", LBMP: "lmp", LOSSES: "loss", CONGESTION: "congestion"}
    file_patterns = {Market.DAY_AHEAD_HOURLY: r"(?P<day>\d{8})damlbmp_(zone|gen)\.csv"}
    name_templates = {Market.DAY_AHEAD_HOURLY: "{day:%Y%m%d}damlbmp_zone.csv"}
    time_column = "Time Stamp"

    def csv_options(self, market: Market) -> dict[str, Any]:
        return {
            "bytes_per_row": 80,
            "string_columns": ("Time Stamp", "Name", "PTID"),
            "float_columns": (LBMP, LOSSES, CONGESTION),
        }

    def file_context(self, path: Path, market: Market) -> tuple[str, dict[tuple[str, int], int]]:
        """The file's location type, and the wall times seen per location so far: the
        repeated 01:00 of the fall-back day is told apart by file order."""
        return LOCATION_TYPES["gen" if "_gen" in path.name else "zone"], {}

    def canonical_rows(
        self, path: Path, market: Market, batch: pa.RecordBatch, line: int, context: Any
    ) -> pa.Table:
        import numpy as np
        import pyarrow.compute as pc

        location_type, seen = context
        wall = base.parse_times(path, batch.column("Time Stamp"), TIME_FORMAT, "Time Stamp", line)
        names = batch.column("Name")
        utc = (
            base.wall_to_utc(path, wall, names.to_pylist(), self.zone, seen, line, "Time Stamp")
            if len(wall)
            else wall
        )
        published = base.prices(path, batch.column(CONGESTION), CONGESTION, line)
        return base.canonical_table(
            self.iso_id,
            market,
            self.zone,
            utc,
            names,
            location_type,
            base.prices(path, batch.column(LBMP), LBMP, line),
            None,
            pc.negate(published),
            base.prices(path, batch.column(LOSSES), LOSSES, line),
            np.arange(line, line + batch.num_rows),
        )
