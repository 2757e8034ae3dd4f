"""MISO market reports: ``YYYYMMDD_da_expost_lmp.csv`` and ``YYYYMMDD_rt_lmp_final.csv``.

Four preamble lines, then a wide header ``Node,Type,Value,HE 1..HE 24``; three rows per node
(``Value`` LMP, MCC, MLC). Hour-ending is fixed EST (UTC-5), so every day has 24 hours.
MISO publishes no energy component: energy = LMP - MCC - MLC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.iso_lmp import base
from flows.iso_lmp.base import (
    EPOCH_ORDINAL,
    US_PER_DAY,
    US_PER_HOUR,
    US_PER_MINUTE,
    IsoFormat,
    IsoParseError,
    Layout,
    Market,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

HOURS = tuple(f"HE {h}" for h in range(1, 25))
COLUMNS = ("Node", "Type", "Value", *HOURS)
PREAMBLE_LINES = 4
KINDS = ("LMP", "MCC", "MLC")
EST_MINUTES = -300


@dataclass
class _Nodes:
    """One file's reading state: its day's UTC midnight (EST) and the rows of a node whose
    rows may go on in the next batch."""

    midnight: int
    carry: pa.Table | None = None


class Miso(IsoFormat):
    """MISO day-ahead ex-post and real-time final hourly LMPs."""

    iso_id = "MISO"
    timezone = "EST"  # MISO's market day is fixed EST all year
    markets = (Market.DAY_AHEAD_HOURLY, Market.REAL_TIME_HOURLY)
    raw_columns = {m: COLUMNS for m in markets}
    rename = {"Node": "location", "Type": "location_type"}
    file_patterns = {
        Market.DAY_AHEAD_HOURLY: r"(?P<day>\d{8})_da_expost_lmp\.csv",
        Market.REAL_TIME_HOURLY: r"(?P<day>\d{8})_rt_lmp_final\.csv",
    }
    name_templates = {
        Market.DAY_AHEAD_HOURLY: "{day:%Y%m%d}_da_expost_lmp.csv",
        Market.REAL_TIME_HOURLY: "{day:%Y%m%d}_rt_lmp_final.csv",
    }
    time_column = "Node"

    def layout(self, path: Path, market: Market, source: Path) -> Layout:
        """Rows start after the preamble and the header line."""
        lines = base.first_lines(source, PREAMBLE_LINES + 1)
        if len(lines) <= PREAMBLE_LINES:
            raise IsoParseError(path, "file ends before the header", len(lines) + 1)
        self.check_header(
            path, base.split_header(lines[PREAMBLE_LINES]), COLUMNS, PREAMBLE_LINES + 1
        )
        return Layout(skip_rows=PREAMBLE_LINES)

    def raw_chunk_rows(self, chunk_rows: int) -> int:
        return max(3, chunk_rows // 24)  # a raw row is a node's 24 hours of one component

    def csv_options(self, market: Market) -> dict[str, Any]:
        return {
            "bytes_per_row": 400,
            "string_columns": ("Node", "Type", "Value"),
            "float_columns": HOURS,
        }

    def file_context(self, path: Path, market: Market) -> _Nodes:
        day = self.day_of(path.name)
        if day is None:  # the day is in the name only
            raise IsoParseError(path, "not a published MISO file name: its day is unknown")
        midnight = (day.toordinal() - EPOCH_ORDINAL) * US_PER_DAY - EST_MINUTES * US_PER_MINUTE
        return _Nodes(midnight)

    def canonical_rows(
        self, path: Path, market: Market, batch: pa.RecordBatch, lines: Any, context: _Nodes
    ) -> pa.Table | None:
        """The batch's whole nodes; the last node's rows wait for the next batch, as its
        three rows may straddle two CSV blocks."""
        import numpy as np
        import pyarrow as pa

        table = pa.Table.from_batches([batch]).append_column(
            "_line", pa.array(np.arange(lines, lines + len(batch), dtype=np.int64))
        )
        if context.carry is not None:
            table = pa.concat_tables([context.carry, table])
        tail = _last_node_start(table.column("Node"))
        context.carry = table.slice(tail)
        return self._nodes(path, market, table.slice(0, tail), context.midnight) if tail else None

    def last_rows(self, path: Path, market: Market, context: _Nodes) -> pa.Table | None:
        carry = context.carry
        if carry is None or not carry.num_rows:
            return None
        return self._nodes(path, market, carry, context.midnight)

    def _nodes(self, path: Path, market: Market, table: pa.Table, midnight_utc: int) -> pa.Table:
        """Unpivot whole nodes (three rows each) to one row per node and hour."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        kinds = table.column("Value").combine_chunks()
        lines = table.column("_line").to_numpy()
        known = pc.is_in(kinds, value_set=pa.array(KINDS)).to_numpy(zero_copy_only=False)
        if not known.all():
            at = int(np.flatnonzero(~known)[0])
            raise IsoParseError(
                path, f"unknown Value {kinds[at].as_py()!r}", int(lines[at]), "Value"
            )
        rows = {
            kind: np.flatnonzero(pc.equal(kinds, kind).to_numpy(zero_copy_only=False))
            for kind in KINDS
        }
        # Empty names are read as null: compare them as equal, as the published text is.
        nodes = pc.fill_null(table.column("Node").combine_chunks(), "")
        lmp_rows = rows["LMP"]
        lmp_nodes = nodes.take(pa.array(lmp_rows))
        for kind in ("MCC", "MLC"):
            same = len(rows[kind]) == len(lmp_rows) and pc.all(
                pc.equal(nodes.take(pa.array(rows[kind])), lmp_nodes)
            ).as_py() in (True, None)
            if not same:
                at = int(lines[lmp_rows[0]]) if len(lmp_rows) else int(lines[0])
                raise IsoParseError(path, f"nodes without exactly one {kind} row", at, "Value")
        hours = [table.column(column) for column in HOURS]
        if all(h.type == pa.float64() and not h.null_count for h in hours):
            # The usual file: every price is a number, so no error can need its line; one
            # (rows, 24) matrix serves all three components.
            matrix = np.column_stack([h.to_numpy() for h in hours])
            components = {kind: pa.array(matrix[rows[kind]].reshape(-1)) for kind in KINDS}
        else:
            components = self._checked_components(path, table, rows)
        lmp_table = table.select(["Node", "Type", "_line"]).take(pa.array(lmp_rows))
        count = len(lmp_rows)
        start = midnight_utc + np.tile(np.arange(24, dtype=np.int64) * US_PER_HOUR, count)
        repeat = np.repeat(np.arange(count), 24)
        return base.canonical_table(
            self.iso_id,
            market,
            None,
            start,
            pc.take(lmp_table.column("Node"), pa.array(repeat)),
            pc.take(lmp_table.column("Type"), pa.array(repeat)),
            components["LMP"],
            None,
            components["MCC"],
            components["MLC"],
            lmp_table.column("_line").to_numpy()[repeat],
            fixed_offset_minutes=EST_MINUTES,
        )

    def _checked_components(
        self, path: Path, table: pa.Table, rows: dict[str, np.ndarray]
    ) -> dict[str, pa.Array]:
        """Each component's prices, hour by hour, failing at the first bad or missing one."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        components = {}
        for kind in KINDS:
            picked = table.take(pa.array(rows[kind]))
            first = picked.column("_line").to_numpy()
            matrix = np.empty((len(rows[kind]), 24))
            for hour, column in enumerate(HOURS):
                values = base.prices(path, picked.column(column).combine_chunks(), column, first)
                if values.null_count:
                    at = int(first[np.flatnonzero(pc.is_null(values).to_numpy(False))[0]])
                    raise IsoParseError(path, "missing price", at, column)
                matrix[:, hour] = values.to_numpy()
            components[kind] = pa.array(matrix.reshape(-1))
        return components


def _last_node_start(nodes: pa.ChunkedArray) -> int:
    """Index of the first row of the block's last node (0 when it has only one node)."""
    import numpy as np
    import pyarrow.compute as pc

    if len(nodes) == 0:
        return 0
    last = nodes[len(nodes) - 1]
    if last.is_valid:
        same = pc.fill_null(pc.equal(nodes, last), False)
    else:
        same = pc.is_null(nodes)
    other = np.flatnonzero(~same.to_numpy())
    return int(other[-1]) + 1 if len(other) else 0
