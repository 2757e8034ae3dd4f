"""ISO-NE hourly LMPs: day-ahead ``WW_DALMP_ISO_YYYYMMDD.csv`` and real-time final
``lmp_rt_final_YYYYMMDD.csv``.

Quoted rows typed by their first field: ``"C"`` comments, an ``"H"`` header (``"Date","Hour
Ending","Location ID","Location Name","Location Type","Locational Marginal Price","Energy
Component","Congestion Component","Marginal Loss Component"``), an ``"H"`` type line, ``"D"``
data rows, a trailer. Hour ending ``01``-``24`` local; the repeated fall-back hour is ``02X``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.iso_lmp import base
from flows.iso_lmp.base import IsoFormat, IsoParseError, Layout, Market

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = (
    "Date",
    "Hour Ending",
    "Location ID",
    "Location Name",
    "Location Type",
    "Locational Marginal Price",
    "Energy Component",
    "Congestion Component",
    "Marginal Loss Component",
)
PRICES = COLUMNS[5:]
MAX_HEADER_LINES = 64


class Isone(IsoFormat):
    """ISO-NE day-ahead and real-time final hourly LMPs."""

    iso_id = "ISONE"
    timezone = "America/New_York"
    markets = (Market.DAY_AHEAD_HOURLY, Market.REAL_TIME_HOURLY)
    raw_columns = {m: COLUMNS for m in markets}
    rename = {
        "Location Name": "location",
        "Location Type": "location_type",
        "Locational Marginal Price": "lmp",
        "Energy Component": "energy",
        "Congestion Component": "congestion",
        "Marginal Loss Component": "loss",
    }
    file_patterns = {
        Market.DAY_AHEAD_HOURLY: r"WW_DALMP_ISO_(?P<day>\d{8})\.csv",
        Market.REAL_TIME_HOURLY: r"lmp_rt_final_(?P<day>\d{8})\.csv",
    }
    name_templates = {
        Market.DAY_AHEAD_HOURLY: "WW_DALMP_ISO_{day:%Y%m%d}.csv",
        Market.REAL_TIME_HOURLY: "lmp_rt_final_{day:%Y%m%d}.csv",
    }
    time_column = "Hour Ending"

    def layout(self, path: Path, market: Market, source: Path) -> Layout | None:
        """Rows start at the first ``"D"`` row; the first ``"H"`` line before it is the header."""
        leading = base.first_lines(source, MAX_HEADER_LINES)
        skip = 0
        while skip < len(leading) and not leading[skip].startswith('"D"'):
            skip += 1
        headers = [i for i, text in enumerate(leading[:skip]) if text.startswith('"H"')]
        if not headers:
            raise IsoParseError(path, 'no "H" header line', 1)
        self.check_header(path, base.split_header(leading[headers[0]])[1:], COLUMNS, headers[0] + 1)
        if skip == len(leading) and len(leading) < MAX_HEADER_LINES:
            return None  # a file without data rows: nothing to convert
        return Layout(skip_rows=skip, column_names=("kind", *COLUMNS))

    def csv_options(self, market: Market) -> dict[str, Any]:
        return {
            "bytes_per_row": 140,
            "string_columns": ("kind", "Date", "Hour Ending", "Location Name", "Location Type"),
            "float_columns": PRICES,
            "trailer_prefixes": ('"T"', '"C"'),
        }

    def canonical_rows(
        self, path: Path, market: Market, batch: pa.RecordBatch, lines: Any, context: Any
    ) -> pa.Table | None:
        """The batch's ``D`` rows; ``C`` comments among them are dropped."""
        import numpy as np
        import pyarrow.compute as pc

        lines = np.arange(lines, lines + batch.num_rows)
        kinds = batch.column("kind")
        data = pc.equal(kinds, "D")
        if not pc.all(data).as_py():
            comment = pc.equal(kinds, "C").to_numpy(False)
            odd = ~data.to_numpy(False) & ~comment
            if odd.any():
                at = int(np.flatnonzero(odd)[0])
                raise IsoParseError(path, f"unexpected row type {kinds[at]}", int(lines[at]))
            batch, lines = batch.filter(data), lines[~comment]
            if not batch.num_rows:
                return None
        labels = pc.utf8_trim_whitespace(batch.column("Hour Ending"))
        repeat = pc.ends_with(labels, "X")
        numbers = pc.utf8_rtrim(labels, characters="X")
        try:
            hours = pc.cast(numbers, "int64").to_numpy()
        except Exception:
            values = numbers.to_pylist()
            at = next(i for i, v in enumerate(values) if not (v or "").isdigit())
            raise IsoParseError(
                path, f"bad hour ending {values[at]!r}", int(lines[at]), "Hour Ending"
            ) from None
        days = base.epoch_days(path, batch.column("Date"), "%m/%d/%Y", "Date", lines)
        utc = base.hour_ending_starts(
            path, days, hours, repeat.to_numpy(False), self.zone, lines, "Hour Ending"
        )
        values = {c: base.prices(path, batch.column(c), c, lines) for c in PRICES}
        return base.canonical_table(
            self.iso_id,
            market,
            self.zone,
            utc,
            batch.column("Location Name"),
            batch.column("Location Type"),
            values["Locational Marginal Price"],
            values["Energy Component"],
            values["Congestion Component"],
            values["Marginal Loss Component"],
            lines,
        )
