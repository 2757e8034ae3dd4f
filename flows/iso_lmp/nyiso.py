"""NYISO day-ahead LBMPs: ``YYYYMMDDdamlbmp_zone.csv`` and ``YYYYMMDDdamlbmp_gen.csv``.

Columns ``"Time Stamp","Name","PTID","LBMP ($/MWHr)","Marginal Cost Losses ($/MWHr)",
"Marginal Cost Congestion ($/MWHr)"``; the stamp is the interval start in Eastern
prevailing time. On the fall-back day 01:00 appears twice per location, in time order, with
no flag: the second copy of a location is standard time. NYISO's published congestion has
the opposite sign (LBMP = energy + losses - congestion): it is negated here.
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
    wall_to_utc,
)

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

    def read(self, path: Path, market: Market, chunk_rows: int) -> Iterator[pa.Table]:
        """Canonical rows of one NYISO file; the repeated 01:00 told apart by file order."""
        import numpy as np
        import pyarrow.compute as pc

        header = first_lines(path, 1)
        if not header:
            raise IsoParseError(path, "empty file", 1)
        self.check_header(path, split_header(header[0]), COLUMNS, 1)
        location_type = LOCATION_TYPES["gen" if "_gen" in path.name else "zone"]
        seen: dict[tuple[str, int], int] = {}
        for start, batch in csv_batches(
            path,
            path,
            skip_rows=0,
            column_names=None,
            chunk_rows=chunk_rows,
            bytes_per_row=80,
            string_columns=("Time Stamp", "Name", "PTID"),
            float_columns=(LBMP, LOSSES, CONGESTION),
        ):
            line = start + 2
            wall = parse_times(path, batch.column("Time Stamp"), TIME_FORMAT, "Time Stamp", line)
            names = batch.column("Name")
            utc = (
                wall_to_utc(path, wall, names.to_pylist(), self.zone, seen, line, "Time Stamp")
                if len(wall)
                else wall
            )
            published = prices(path, batch.column(CONGESTION), CONGESTION, line)
            yield canonical_table(
                self.iso_id,
                market,
                self.zone,
                utc,
                names,
                location_type,
                prices(path, batch.column(LBMP), LBMP, line),
                None,
                pc.negate(published),
                prices(path, batch.column(LOSSES), LOSSES, line),
                np.arange(line, line + batch.num_rows),
            )
