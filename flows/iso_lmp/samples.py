"""Raw price files in each ISO's published format and file naming, from a known truth.

Prices are a deterministic function of (market, node, UTC interval), in whole cents with
``lmp = energy + congestion + loss``; :func:`truth` returns the canonical rows a correct
reader must produce from a file, so tests compare against the generator, not by hand.
Files are written with pyarrow from whole columns (fast enough for the benchmark's
thousands of nodes); timestamps are formatted once per distinct interval.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.iso_lmp.base import US_PER_MINUTE, IsoFormat, Market, local_day_hours
from flows.iso_lmp.formats.registry import ISOS, iso_format

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

FALL_BACK = date(2023, 11, 5)
SPRING_FORWARD = date(2024, 3, 10)
ORDINARY = date(2024, 1, 15)
SAMPLE_DAYS = (FALL_BACK, SPRING_FORWARD, ORDINARY)
ZIP_TIME = (2024, 1, 1, 0, 0, 0)  # fixed member time: the same inputs give the same bytes
COMPONENTS = {"ERCOT": False}
"""ISOs that publish no components (energy, congestion, loss are null)."""


def locations(iso: str, count: int) -> list[tuple[str, str, str]]:
    """(name, type as published, canonical type) of ``count`` locations of an ISO."""
    out = []
    for index in range(count):
        if iso == "ERCOT":
            # day-ahead files name no type: the reader infers it from the HB_/LZ_ prefix
            raw = ("HU", "LZ")[index] if index < 2 else "RN"
            name = ("HB_NORTH", "LZ_HOUSTON")[index] if index < 2 else f"UNIT_{index:04d}_RN"
            out.append(
                (name, raw, {"HU": "Trading Hub", "LZ": "Load Zone"}.get(raw, "Resource Node"))
            )
        elif iso == "NYISO":
            out.append((f"ZONE_{index:04d}", "", "Zone"))
        elif iso == "SPP":
            out.append((f"SPP_SL_{index:04d}", "", "Settlement Location"))
        elif iso == "CAISO":
            out.append((f"NODE_{index:04d}_7_N001", "", "Node"))
        else:
            kind = "HUB" if index == 0 else ("ZONE" if index == 1 else "GEN")
            out.append((f"{iso}.NODE{index:04d}", kind, kind))
    return out


def interval_starts(fmt: IsoFormat, market: Market, day: date) -> np.ndarray:
    """UTC starts (us) of every interval of the local operating day ``day``."""
    import numpy as np

    midnight, hours = local_day_hours(day, fmt.zone)
    step = market.minutes * US_PER_MINUTE
    return midnight + np.arange(hours * 60 // market.minutes, dtype=np.int64) * step


def cents(starts: np.ndarray, nodes: np.ndarray, market: Market, bump: int = 0):
    """(energy, congestion, loss) in cents for each interval and node (broadcast)."""
    import numpy as np

    step = starts // (market.minutes * US_PER_MINUTE)
    market_no = list(Market).index(market)
    energy = 2_000 + (step * 37 + nodes * 101 + market_no * 7) % 3_000 + bump
    congestion = (step * 13 + nodes * 7 + market_no) % 401 - 200
    loss = (step * 11 + nodes * 3) % 101 - 50
    return energy.astype(np.int64), congestion.astype(np.int64), loss.astype(np.int64)


def truth(iso: str, market: Market, day: date, nodes: int, bump: int = 0) -> pa.Table:
    """The canonical rows (location, start, prices in $) a correct reader yields for a file."""
    import numpy as np
    import pyarrow as pa

    fmt = iso_format(iso)
    starts = interval_starts(fmt, market, day)
    node_no = np.repeat(np.arange(nodes), len(starts))
    start = np.tile(starts, nodes)
    energy, congestion, loss = cents(start, node_no, market, bump)
    places = locations(fmt.iso_id, nodes)
    has = COMPONENTS.get(fmt.iso_id, True)
    # ERCOT's real-time files publish the type code itself
    type_field = 1 if (fmt.iso_id, market) == ("ERCOT", Market.REAL_TIME_15_MIN) else 2
    nulls = pa.nulls(len(start), pa.float64())
    return pa.table(
        {
            "market": pa.array([market.value] * len(start)),
            "location": pa.array([places[n][0] for n in node_no]),
            "location_type": pa.array([places[n][type_field] for n in node_no]),
            "interval_start_utc": pa.array(start).cast(pa.timestamp("us", tz="UTC")),
            "lmp": pa.array((energy + congestion + loss) / 100),
            "energy": pa.array(energy / 100) if has else nulls,
            "congestion": pa.array(congestion / 100) if has else nulls,
            "loss": pa.array(loss / 100) if has else nulls,
        }
    )


# ---------------------------------------------------------------------------------------------
# Writing files


def write_day(
    iso: str,
    market: Market,
    day: date,
    directory: Path,
    nodes: int,
    bump: int = 0,
    version: int = 1,
) -> Path:
    """Write one published file of ``market`` on ``day`` with ``nodes`` locations."""
    import numpy as np

    fmt = iso_format(iso)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / fmt.file_name(market, day)
    starts = interval_starts(fmt, market, day)
    places = locations(fmt.iso_id, nodes)
    # Grid in time-major order (all nodes of an interval, then the next interval).
    interval_no = np.repeat(np.arange(len(starts)), nodes)
    node_no = np.tile(np.arange(nodes), len(starts))
    energy, congestion, loss = cents(starts[interval_no], node_no, market, bump)
    grid = Grid(fmt, market, day, starts, places, interval_no, node_no, energy, congestion, loss)
    WRITERS[fmt.iso_id](grid, path, version)
    return path


class Grid:
    """One file's values: intervals x nodes, in cents, plus naming helpers."""

    def __init__(self, fmt, market, day, starts, places, interval_no, node_no, e, c, l):  # noqa: E741
        self.fmt, self.market, self.day, self.starts, self.places = fmt, market, day, starts, places
        self.interval_no, self.node_no = interval_no, node_no
        self.energy, self.congestion, self.loss = e, c, l
        self.lmp = e + c + l

    def per_interval(self, texts: Sequence[str]) -> pa.Array:
        """A column from one string per interval."""
        import pyarrow as pa

        return pa.array(list(texts)).take(pa.array(self.interval_no))

    def per_node(self, index: int) -> pa.Array:
        """A column from the locations' field ``index``."""
        import pyarrow as pa

        return pa.array([p[index] for p in self.places]).take(pa.array(self.node_no))

    def money(self, values: np.ndarray) -> pa.Array:
        """Dollar strings (shortest exact form) of cent values."""
        import pyarrow as pa
        import pyarrow.compute as pc

        return pc.cast(pa.array(values / 100), pa.string())

    def utc(self, offset_us: int = 0) -> list[datetime]:
        return [
            datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(s + offset_us))
            for s in self.starts
        ]

    def local(self, offset_us: int = 0) -> list[datetime]:
        return [t.astimezone(self.fmt.zone).replace(tzinfo=None) for t in self.utc(offset_us)]

    def hour_labels(self) -> list[tuple[int, bool]]:
        """(hour-ending label, second copy of the repeated hour) of each hourly interval."""
        hours = len(self.starts) * self.market.minutes // 60
        labels = []
        for index in range(len(self.starts)):
            ordinal = index * self.market.minutes // 60 + 1
            if hours == 25:
                labels.append((ordinal - (ordinal > 2), ordinal == 3))
            elif hours == 23:
                labels.append((ordinal + (ordinal >= 2), False))
            else:
                labels.append((ordinal, False))
        return labels


def _write_csv(table: pa.Table, target: Any, quoted: bool = False, header: bool = True) -> None:
    import pyarrow.csv as pacsv

    if header and not quoted:  # pyarrow would quote the names; these formats do not
        names = (",".join(table.column_names) + "\n").encode()
        target.write(names) if hasattr(target, "write") else Path(target).write_bytes(names)
        if not hasattr(target, "write"):
            with open(target, "ab") as stream:
                pacsv.write_csv(
                    table, stream, pacsv.WriteOptions(include_header=False, quoting_style="none")
                )
            return
        header = False
    options = pacsv.WriteOptions(
        include_header=header, quoting_style="all_valid" if quoted else "none"
    )
    pacsv.write_csv(table, target, options)


def _zip(path: Path, member: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    _write_csv(table, buffer)
    info = zipfile.ZipInfo(member, date_time=ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(info, buffer.getvalue())


def _miso(grid: Grid, path: Path, version: int) -> None:
    import numpy as np
    import pyarrow as pa

    title = "Day Ahead Market ExPost LMPs" if "da_" in path.name else "Real-Time Market Final LMPs"
    nodes = len(grid.places)
    columns: dict[str, Any] = {
        "Node": pa.array([p[0] for p in grid.places for _ in range(3)]),
        "Type": pa.array([p[1] for p in grid.places for _ in range(3)]),
        "Value": pa.array(["LMP", "MCC", "MLC"] * nodes),
    }
    # values are time-major: reshape to (hours, nodes), then rows LMP/MCC/MLC per node
    stacked = np.stack(
        [v.reshape(24, nodes).T for v in (grid.lmp, grid.congestion, grid.loss)], axis=1
    ).reshape(nodes * 3, 24)
    for hour in range(24):
        columns[f"HE {hour + 1}"] = grid.money(stacked[:, hour])
    with open(path, "wb") as out:
        out.write(f"{title}\n{grid.day:%m/%d/%Y}\n,,,,,,\n".encode())
        out.write(b'"All Hours-Ending are Eastern Standard Time (EST)"\n')
        _write_csv(pa.table(columns), out)


def _pjm(grid: Grid, path: Path, version: int) -> None:
    import pyarrow as pa

    def stamp(t: datetime) -> str:
        hour = t.hour % 12 or 12
        return f"{t.month}/{t.day}/{t.year} {hour}:{t.minute:02d}:{t.second:02d} {t:%p}"

    suffix = "da" if path.name.startswith("da_") else "rt"
    rows = len(grid.node_no)
    table = pa.table(
        {
            "datetime_beginning_utc": grid.per_interval([stamp(t) for t in grid.utc()]),
            "datetime_beginning_ept": grid.per_interval([stamp(t) for t in grid.local()]),
            "pnode_id": grid.per_node(0),
            "pnode_name": grid.per_node(0),
            "voltage": pa.nulls(rows, pa.string()),
            "equipment": pa.nulls(rows, pa.string()),
            "type": grid.per_node(1),
            "zone": pa.array(["PEPCO"] * rows),
            f"system_energy_price_{suffix}": grid.money(grid.energy),
            f"total_lmp_{suffix}": grid.money(grid.lmp),
            f"congestion_price_{suffix}": grid.money(grid.congestion),
            f"marginal_loss_price_{suffix}": grid.money(grid.loss),
            "row_is_current": pa.array(["TRUE"] * rows),
            "version_nbr": pa.array([version] * rows),
        }
    )
    _write_csv(table, path)


def _caiso(grid: Grid, path: Path, version: int) -> None:
    import numpy as np
    import pyarrow as pa

    query, run = grid.fmt.queries[grid.market]
    step = grid.market.minutes * US_PER_MINUTE
    per_hour = 60 // grid.market.minutes
    order = np.lexsort((grid.interval_no, grid.node_no))  # node, then interval
    kinds = {
        "LMP": grid.lmp,
        "MCE": grid.energy,
        "MCC": grid.congestion,
        "MCL": grid.loss,
        "MGHG": np.zeros_like(grid.lmp),
    }
    items = dict(
        zip(
            kinds,
            ("LMP_PRC", "LMP_ENE_PRC", "LMP_CONG_PRC", "LMP_LOSS_PRC", "LMP_GHG_PRC"),
            strict=True,
        )
    )
    gmt = [f"{t:%Y-%m-%dT%H:%M:%S}-00:00" for t in grid.utc()]
    gmt_end = [f"{t:%Y-%m-%dT%H:%M:%S}-00:00" for t in grid.utc(step)]
    parts = []
    for kind, values in kinds.items():  # grouped by LMP_TYPE: the pivot must not care
        interval = pa.array(grid.interval_no[order])
        node = grid.per_node(0).take(pa.array(order))
        rows = len(order)
        parts.append(
            pa.table(
                {
                    "INTERVALSTARTTIME_GMT": pa.array(gmt).take(interval),
                    "INTERVALENDTIME_GMT": pa.array(gmt_end).take(interval),
                    "OPR_DT": pa.array([f"{grid.day:%Y-%m-%d}"] * rows),
                    "OPR_HR": pa.array((grid.interval_no[order] // per_hour) + 1),
                    "OPR_INTERVAL": pa.array(
                        (grid.interval_no[order] % per_hour) + (0 if per_hour == 1 else 1)
                    ),
                    "NODE_ID_XML": node,
                    "NODE_ID": node,
                    "NODE": node,
                    "MARKET_RUN_ID": pa.array([run] * rows),
                    "LMP_TYPE": pa.array([kind] * rows),
                    "XML_DATA_ITEM": pa.array([items[kind]] * rows),
                    "PNODE_RESMRID": node,
                    "GRP_TYPE": pa.array(["ALL_APNODES"] * rows),
                    "POS": pa.array([0] * rows),
                    "MW": grid.money(values[order]),
                    "GROUP": pa.array([1] * rows),
                }
            )
        )
    _zip(path, path.name.removesuffix(".zip") + ".csv", pa.concat_tables(parts))
    del query


def _nyiso(grid: Grid, path: Path, version: int) -> None:
    import pyarrow as pa

    table = pa.table(
        {
            "Time Stamp": grid.per_interval([f"{t:%m/%d/%Y %H:%M}" for t in grid.local()]),
            "Name": grid.per_node(0),
            "PTID": pa.array((61757 + grid.node_no).astype("int64")),
            "LBMP ($/MWHr)": grid.money(grid.lmp),
            "Marginal Cost Losses ($/MWHr)": grid.money(grid.loss),
            # NYISO publishes congestion with the opposite sign
            "Marginal Cost Congestion ($/MWHr)": grid.money(-grid.congestion),
        }
    )
    _write_csv(table, path, quoted=True)


def _spp(grid: Grid, path: Path, version: int) -> None:
    import pyarrow as pa

    step = grid.market.minutes * US_PER_MINUTE
    table = pa.table(
        {
            "Interval": grid.per_interval([f"{t:%m/%d/%Y %H:%M:%S}" for t in grid.local(step)]),
            "GMTIntervalEnd": grid.per_interval([f"{t:%m/%d/%Y %H:%M:%S}" for t in grid.utc(step)]),
            "Settlement Location": grid.per_node(0),
            "Pnode": grid.per_node(0),
            "LMP": grid.money(grid.lmp),
            "MLC": grid.money(grid.loss),
            "MCC": grid.money(grid.congestion),
            "MEC": grid.money(grid.energy),
        }
    )
    _write_csv(table, path)


def _isone(grid: Grid, path: Path, version: int) -> None:
    import pyarrow as pa

    labels = [f"{n:02d}" + ("X" if second else "") for n, second in grid.hour_labels()]
    rows = len(grid.node_no)
    table = pa.table(
        {
            "H": pa.array(["D"] * rows),
            "Date": pa.array([f"{grid.day:%m/%d/%Y}"] * rows),
            "Hour Ending": grid.per_interval(labels),
            "Location ID": pa.array((4000 + grid.node_no).astype("int64")).cast(pa.string()),
            "Location Name": grid.per_node(0),
            "Location Type": grid.per_node(1),
            "Locational Marginal Price": grid.money(grid.lmp),
            "Energy Component": grid.money(grid.energy),
            "Congestion Component": grid.money(grid.congestion),
            "Marginal Loss Component": grid.money(grid.loss),
        }
    )
    kind = "Day-Ahead" if path.name.startswith("WW_") else "Real-Time"
    names = ",".join(f'"{c}"' for c in table.column_names[1:])
    with open(path, "wb") as out:
        out.write(f'"C","{kind} Energy Market Hourly LMP Report"\n'.encode())
        out.write(f'"C","Report for: {grid.day:%m/%d/%Y}"\n'.encode())
        out.write(b'"C","Report generated by headroom samples"\n')
        out.write(f'"H",{names}\n'.encode())
        out.write(b'"H","Date","Hour Ending","Number","Name","Type",')
        out.write(b'"Numeric","Numeric","Numeric","Numeric"\n')
        _write_csv(table, out, quoted=True, header=False)
        out.write(f'"T","Total Number of Rows:  {rows}"\n'.encode())


def _ercot(grid: Grid, path: Path, version: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    labels = grid.hour_labels()
    rows = len(grid.node_no)
    price = grid.money(grid.lmp)
    # ERCOT prices may carry a leading space: every third row here does
    spaced = pa.array(np.arange(rows) % 3 == 0)
    price = pc.if_else(spaced, pc.binary_join_element_wise(" ", price, ""), price)
    flags = grid.per_interval(["Y" if second else "N" for _, second in labels])
    date_text = pa.array([f"{grid.day:%m/%d/%Y}"] * rows)
    if grid.market is Market.DAY_AHEAD_HOURLY:
        table = pa.table(
            {
                "DeliveryDate": date_text,
                "HourEnding": grid.per_interval([f"{n:02d}:00" for n, _ in labels]),
                "SettlementPoint": grid.per_node(0),
                "SettlementPointPrice": price,
                "DSTFlag": flags,
            }
        )
    else:
        table = pa.table(
            {
                "DeliveryDate": date_text,
                "DeliveryHour": grid.per_interval([str(n) for n, _ in labels]),
                "DeliveryInterval": pa.array(grid.interval_no % 4 + 1),
                "SettlementPointName": grid.per_node(0),
                "SettlementPointType": grid.per_node(1),
                "SettlementPointPrice": price,
                "DSTFlag": flags,
            }
        )
    _zip(path, path.name.removesuffix("_csv.zip") + ".csv", table)


WRITERS = {
    "MISO": _miso,
    "PJM": _pjm,
    "CAISO": _caiso,
    "NYISO": _nyiso,
    "SPP": _spp,
    "ISONE": _isone,
    "ERCOT": _ercot,
}


def write_samples(
    root: Path,
    isos: Iterable[str] | None = None,
    days: Sequence[date] = SAMPLE_DAYS,
    nodes: int = 4,
    markets: Iterable[Market] | None = None,
) -> list[tuple[str, Market, date, Path]]:
    """Write every market's file of ``days`` for each ISO under ``root/<iso>/``."""
    written = []
    for iso in isos or ISOS:
        fmt = iso_format(iso)
        for market in fmt.markets:
            if markets is not None and market not in set(markets):
                continue
            for day in days:
                path = write_day(fmt.iso_id, market, day, root / fmt.iso_id.lower(), nodes)
                written.append((fmt.iso_id, market, day, path))
    log.info("wrote %d sample files under %s", len(written), root)
    return written
