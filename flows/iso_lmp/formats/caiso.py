"""CAISO OASIS price zips (``PRC_LMP`` day-ahead, ``PRC_INTVL_LMP`` 5-minute, ``PRC_RTPD_LMP``
15-minute), one long CSV inside: one row per node, interval and ``LMP_TYPE`` (LMP, MCE, MCC,
MCL, MGHG) to pivot.

Rows of one node and interval may be anywhere in the file, so the pivot runs in DuckDB (it
spills to disk past its memory limit) rather than in a Python dictionary. UTC columns
(``INTERVALSTARTTIME_GMT``) give the time; energy is the published MCE.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.iso_lmp import base
from flows.iso_lmp.base import IsoFormat, IsoParseError, Layout, Market
from headroom.isolation.guard import duckdb_share

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = (
    "INTERVALSTARTTIME_GMT",
    "INTERVALENDTIME_GMT",
    "OPR_DT",
    "OPR_HR",
    "OPR_INTERVAL",
    "NODE_ID_XML",
    "NODE_ID",
    "NODE",
    "MARKET_RUN_ID",
    "LMP_TYPE",
    "XML_DATA_ITEM",
    "PNODE_RESMRID",
    "GRP_TYPE",
    "POS",
    "MW",
    "GROUP",
)
LMP_TYPES = {"LMP": "lmp", "MCE": "energy", "MCC": "congestion", "MCL": "loss", "MGHG": "ghg"}
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


class Caiso(IsoFormat):
    """CAISO day-ahead, 15-minute and 5-minute nodal LMPs from OASIS."""

    iso_id = "CAISO"
    timezone = "America/Los_Angeles"
    markets = (Market.DAY_AHEAD_HOURLY, Market.REAL_TIME_15_MIN, Market.REAL_TIME_5_MIN)
    raw_columns = {m: COLUMNS for m in markets}
    rename = {"NODE": "location", "GRP_TYPE": "location_type", "MW": "price"}
    queries = {
        Market.DAY_AHEAD_HOURLY: ("PRC_LMP", "DAM"),
        Market.REAL_TIME_15_MIN: ("PRC_RTPD_LMP", "RTPD"),
        Market.REAL_TIME_5_MIN: ("PRC_INTVL_LMP", "RTM"),
    }
    file_patterns = {
        m: rf"(?P<day>\d{{8}})_\d{{8}}_{q}_{run}_.*\.zip" for m, (q, run) in queries.items()
    }
    time_column = "INTERVALSTARTTIME_GMT"

    def file_name(self, market: Market, day: date) -> str:
        """OASIS names a zip by its start and end dates, query and market run."""
        query, run = self.queries[market]
        return f"{day:%Y%m%d}_{day + timedelta(days=1):%Y%m%d}_{query}_{run}_v12.zip"

    @contextmanager
    def source(self, path: Path) -> Iterator[Path]:
        """The zip's CSV, extracted to a temporary directory that DuckDB also works in."""
        archive, member = base.open_zip_csv(path)
        with tempfile.TemporaryDirectory(prefix="caiso-") as work:
            csv_path = Path(work, "prices.csv")
            try:
                with archive, member, open(csv_path, "wb") as target:
                    shutil.copyfileobj(member, target, 1 << 20)
            except Exception as exc:  # zlib.error, BadZipFile, EOFError: a cut-short zip
                raise IsoParseError(path, f"truncated or corrupt zip ({exc})") from None
            yield csv_path

    def batches(
        self, path: Path, market: Market, source: Path, layout: Layout, chunk_rows: int
    ) -> Iterator[tuple[Any, pa.RecordBatch]]:
        """Pivoted rows, each with the line of its node and interval's first raw row."""
        import duckdb

        work = source.parent
        con = duckdb.connect(str(work / "pivot.duckdb"))
        try:
            con.execute("SET memory_limit = ?", [duckdb_share()])
            con.execute("SET threads=1")  # keeps file order for line numbers
            con.execute("SET temp_directory = ?", [f"{work}/spill"])
            for batch in self._pivot(con, path, source, chunk_rows):
                yield batch.column("_line").to_numpy(), batch
        finally:
            con.close()

    def canonical_rows(
        self, path: Path, market: Market, batch: pa.RecordBatch, lines: Any, context: Any
    ) -> pa.Table:
        utc = base.parse_times(path, batch.column("start"), TIME_FORMAT, self.time_column, lines)
        return base.canonical_table(
            self.iso_id,
            market,
            self.zone,
            utc,
            batch.column("NODE"),
            "Node",
            batch.column("lmp"),
            batch.column("energy"),
            batch.column("congestion"),
            batch.column("loss"),
            lines,
        )

    def _pivot(
        self, con: Any, path: Path, csv_path: Path, chunk_rows: int
    ) -> Iterator[pa.RecordBatch]:
        """The raw rows checked, then pivoted by node and interval (in that order)."""
        con.execute(
            "CREATE TABLE raw AS SELECT row_number() OVER () + 1 AS _line, * FROM read_csv(?, "
            "header=true, all_varchar=true, delim=',', quote='\"')",
            [str(csv_path)],
        )
        bad = con.execute(
            "SELECT _line, MW FROM raw WHERE MW IS NOT NULL AND TRY_CAST(MW AS DOUBLE) IS NULL "
            "ORDER BY _line LIMIT 1"
        ).fetchone()
        if bad:
            raise IsoParseError(path, f"non-numeric price {bad[1]!r}", bad[0], "MW")
        kinds = ", ".join(f"'{k}'" for k in LMP_TYPES)
        unknown = con.execute(
            f"SELECT _line, LMP_TYPE FROM raw WHERE LMP_TYPE NOT IN ({kinds}) "
            "ORDER BY _line LIMIT 1"
        ).fetchone()
        if unknown:
            raise IsoParseError(path, f"unknown LMP_TYPE {unknown[1]!r}", unknown[0], "LMP_TYPE")
        duplicate = con.execute(
            "SELECT max(_line), NODE, INTERVALSTARTTIME_GMT FROM raw "
            "GROUP BY NODE, INTERVALSTARTTIME_GMT, LMP_TYPE HAVING count(*) > 1 "
            "ORDER BY 1 LIMIT 1"
        ).fetchone()
        if duplicate:
            raise IsoParseError(
                path,
                f"duplicate interval {duplicate[2]} for {duplicate[1]} (not a DST repeat)",
                duplicate[0],
                self.time_column,
            )
        pivots = ", ".join(
            f"max(CASE WHEN LMP_TYPE = '{k}' THEN CAST(MW AS DOUBLE) END) AS {v}"
            for k, v in LMP_TYPES.items()
        )
        result = con.sql(
            f"SELECT NODE, INTERVALSTARTTIME_GMT AS start, "
            f"min(_line) AS _line, {pivots} FROM raw GROUP BY NODE, INTERVALSTARTTIME_GMT "
            "ORDER BY NODE, INTERVALSTARTTIME_GMT"
        )
        yield from result.to_arrow_reader(chunk_rows)
