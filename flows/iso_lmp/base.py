"""What every ISO price format shares: markets, the canonical schema, errors, time rules.

Canonical rows (one per market, location and interval): ``iso``, ``market``,
``interval_start_utc``/``interval_end_utc`` (UTC timestamps), ``interval_start_local`` (naive
wall time in the ISO's zone) with ``utc_offset_minutes``, ``location``, ``location_type``, and
the prices ``lmp``, ``energy``, ``congestion``, ``loss`` in $/MWh.

Sign convention, everywhere: ``lmp = energy + congestion + loss``. Every ISO but NYISO
publishes its components that way; NYISO publishes congestion with the opposite sign
(LBMP = energy + losses - published congestion), so its congestion is negated on read.
Where an ISO publishes no energy component but the others (MISO), energy is derived as
``lmp - congestion - loss``; where it publishes no components at all (ERCOT settlement point
prices) all three are null.

Time: UTC columns are used where a file has them (PJM, CAISO, SPP). Otherwise local time is
read with the market's rule: hour-ending labels count the hours of the local day, so on a
fall-back day the repeated hour (label 02, written ``02X`` by ISO-NE, ``DSTFlag=Y`` by ERCOT)
is the third hour and every later label moves one hour on; on a spring-forward day label 02
does not exist and the day has 23 hours. MISO's hour-ending is fixed EST (always 24 hours).
NYISO's interval-start stamps repeat 01:00 on the fall-back day, told apart by file order.

Readers stream: each yields canonical tables of at most ``chunk_rows`` rows, plus the source
line of each row (``_line``) and its revision (``_revision``, PJM ``version_nbr``, else 0).
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from zoneinfo import ZoneInfo

from headroom import BadInput

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

US_PER_MINUTE = 60_000_000
US_PER_HOUR = 60 * US_PER_MINUTE
US_PER_DAY = 24 * US_PER_HOUR
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


class Market(enum.StrEnum):
    """The markets whose file formats are known (values as gridstatus names them)."""

    DAY_AHEAD_HOURLY = "DAY_AHEAD_HOURLY"
    REAL_TIME_HOURLY = "REAL_TIME_HOURLY"
    REAL_TIME_15_MIN = "REAL_TIME_15_MIN"
    REAL_TIME_5_MIN = "REAL_TIME_5_MIN"

    @property
    def minutes(self) -> int:
        """Length of one interval of this market."""
        return {"DAY_AHEAD_HOURLY": 60, "REAL_TIME_HOURLY": 60}.get(
            self.value, 15 if self is Market.REAL_TIME_15_MIN else 5
        )


CANONICAL_COLUMNS = (
    "iso",
    "market",
    "interval_start_utc",
    "interval_end_utc",
    "interval_start_local",
    "utc_offset_minutes",
    "location",
    "location_type",
    "lmp",
    "energy",
    "congestion",
    "loss",
)
TEXT_COLUMNS = ("iso", "market", "location", "location_type")
"""The repetitive text columns: the only ones worth a Parquet dictionary."""
PUBLISHED_PARQUET: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": list(TEXT_COLUMNS),
    "write_statistics": ["interval_start_utc", "interval_end_utc"],
    "store_schema": False,
}
"""ParquetWriter options of published partitions, written from tables of
``canonical_schema(encoded=True)``. Statistics only where readers filter (time; iso and
market are the partition path): statistics of text and prices would cost writing time and
serve no reader. Without the stored Arrow schema the dictionary-encoded text reads back as plain
strings, and every other column as its canonical type (Parquet's logical types carry UTC,
int16 and the required fields)."""


def canonical_schema(staging: bool = False, encoded: bool | None = None) -> pa.Schema:
    """The one output schema; ``staging`` (the readers' tables and the staged parts) adds
    source line and revision.

    ``encoded`` (the default with ``staging``) holds the text columns dictionary-encoded, as
    every table is held until written: a file repeats one ISO, one market and a few thousand
    locations, so the Parquet writers and the duplicate check take codes instead of hashing
    every row's text again. Published files leave the Arrow schema out (see
    :data:`PUBLISHED_PARQUET`), so they read back as the plain schema."""
    import pyarrow as pa

    utc = pa.timestamp("us", tz="UTC")
    if encoded is None:
        encoded = staging
    text = pa.dictionary(pa.int32(), pa.string()) if encoded else pa.string()
    fields = [
        pa.field("iso", text, nullable=False),
        pa.field("market", text, nullable=False),
        pa.field("interval_start_utc", utc, nullable=False),
        pa.field("interval_end_utc", utc, nullable=False),
        pa.field("interval_start_local", pa.timestamp("us"), nullable=False),
        pa.field("utc_offset_minutes", pa.int16(), nullable=False),
        pa.field("location", text, nullable=False),
        pa.field("location_type", text),
        pa.field("lmp", pa.float64()),
        pa.field("energy", pa.float64()),
        pa.field("congestion", pa.float64()),
        pa.field("loss", pa.float64()),
    ]
    if staging:
        fields += [pa.field("_line", pa.int64()), pa.field("_revision", pa.int64())]
    return pa.schema(fields)


class IsoParseError(BadInput):
    """A raw file that cannot be converted; names the file, line and column."""

    def __init__(self, path: str | Path, message: str, line: int | None = None, column: str = ""):
        self.path, self.line, self.column = str(path), line, column
        where = Path(path).name
        if line is not None:
            where += f", line {line}"
        if column:
            where += f", column {column[:60]!r}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # keep the fields when the error crosses the guard's pickle
        return (_rebuild_parse_error, (self.path, str(self), self.line, self.column))


def _rebuild_parse_error(path: str, text: str, line: int | None, column: str) -> IsoParseError:
    error = IsoParseError.__new__(IsoParseError)
    BadInput.__init__(error, text)
    error.path, error.line, error.column = path, line, column
    return error


# ---------------------------------------------------------------------------------------------
# The base class


@dataclass(frozen=True)
class Layout:
    """Where a raw CSV's rows start: rows to skip before them and, when the file's own header
    is not the line just before them, the column names."""

    skip_rows: int
    column_names: tuple[str, ...] | None = None

    @property
    def first_line(self) -> int:
        """The file line (1-based) of the first data row."""
        return self.skip_rows + (1 if self.column_names else 2)


class IsoFormat:
    """One ISO: id, time zone, markets, the raw columns it reads and how it renames them."""

    iso_id: str = ""
    timezone: str = "UTC"
    markets: tuple[Market, ...] = ()
    raw_columns: dict[Market, tuple[str, ...]] = {}
    rename: dict[str, str] = {}
    """Raw column -> canonical column, for the columns mapped one to one."""
    file_patterns: dict[Market, str] = {}
    """Regular expression (with a ``day`` group, YYYYMMDD) of each market's published files."""
    name_templates: dict[Market, str] = {}
    """The published file name of a market's day (``{day:%Y%m%d}``)."""
    time_column: str = ""
    """The column a duplicated interval is reported against."""
    optional_columns: tuple[str, ...] = ()
    """Columns a header may have besides the market's raw columns."""

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def market_of(self, name: str) -> Market | None:
        """The market of a raw file, from its published name; None for a foreign file."""
        for market, pattern in self.file_patterns.items():
            if re.fullmatch(pattern, name):
                return market
        return None

    def day_of(self, name: str) -> date | None:
        """The operating day a raw file covers, from its published name."""
        for pattern in self.file_patterns.values():
            match = re.fullmatch(pattern, name)
            if match:
                return datetime.strptime(match.group("day"), "%Y%m%d").date()
        return None

    def file_name(self, market: Market, day: date) -> str:
        """The published file name of ``market`` on ``day``."""
        return self.name_templates[market].format(day=day)

    def read(self, path: Path, market: Market, chunk_rows: int) -> Iterator[pa.Table]:
        """Canonical tables (staging schema) of at most ``chunk_rows`` rows.

        The template every reader follows: open the file's CSV (:meth:`source`), check its
        header and find its first data row (:meth:`layout`), stream it in batches of raw rows
        (:meth:`batches`, by default :func:`csv_batches` with :meth:`csv_options`), turn each
        into canonical rows (:meth:`canonical_rows`) knowing its source lines, and end with
        what the file context still holds (:meth:`last_rows`). A file whose layout leaves
        nothing to read (``None``) yields nothing."""
        with self.source(path) as source:
            layout = self.layout(path, market, source)
            if layout is None:
                return
            context = self.file_context(path, market)
            for lines, batch in self.batches(path, market, source, layout, chunk_rows):
                table = self.canonical_rows(path, market, batch, lines, context)
                if table is not None:
                    yield table
            last = self.last_rows(path, market, context)
            if last is not None:
                yield last

    def source(self, path: Path) -> AbstractContextManager[Any]:
        """The readable CSV of a raw file while it is read: the file itself by default."""
        return nullcontext(path)

    def layout(self, path: Path, market: Market, source: Any) -> Layout | None:
        """Check the header and say where the rows start: by default the first line is the
        header, checked against the market's raw columns."""
        header = first_lines(source, 1)
        if not header:  # a source other than the raw file is the CSV inside its zip
            raise IsoParseError(path, "empty CSV in zip" if source != path else "empty file", 1)
        self.check_header(
            path,
            split_header(header[0]),
            self.raw_columns[market],
            1,
            optional=self.optional_columns,
        )
        return Layout(skip_rows=0)

    def batches(
        self, path: Path, market: Market, source: Any, layout: Layout, chunk_rows: int
    ) -> Iterator[tuple[Any, pa.RecordBatch]]:
        """(source line of the first row, or of each row; raw rows) of the file."""
        for start, batch in csv_batches(
            source,
            path,
            skip_rows=layout.skip_rows,
            column_names=layout.column_names,
            chunk_rows=self.raw_chunk_rows(chunk_rows),
            **self.csv_options(market),
        ):
            yield layout.first_line + start, batch

    def raw_chunk_rows(self, chunk_rows: int) -> int:
        """Raw rows per batch that give about ``chunk_rows`` canonical rows."""
        return chunk_rows

    def csv_options(self, market: Market) -> dict[str, Any]:
        """:func:`csv_batches` options of a market's files (types, columns, row size)."""
        raise NotImplementedError

    def file_context(self, path: Path, market: Market) -> Any:
        """What :meth:`canonical_rows` carries from batch to batch of one file (None)."""
        return None

    def canonical_rows(
        self, path: Path, market: Market, batch: pa.RecordBatch, lines: Any, context: Any
    ) -> pa.Table | None:
        """One batch of raw rows as canonical rows (None: none yet). ``lines`` is the source
        line of the batch's first row (an int; the others follow it) or of each row."""
        raise NotImplementedError

    def last_rows(self, path: Path, market: Market, context: Any) -> pa.Table | None:
        """Canonical rows the file context still holds after the last batch (None)."""
        return None

    # Helpers shared by the readers -------------------------------------------------------

    def check_header(
        self,
        path: Path,
        found: Sequence[str],
        expected: Sequence[str],
        line: int,
        optional: Sequence[str] = (),
    ) -> None:
        """Fail naming the first unknown or missing column of a header."""
        found = [c.strip().strip('"').lstrip("\ufeff") for c in found]
        for column in found:
            if column not in expected and column not in optional:
                raise IsoParseError(path, "unknown column in header", line, column)
        for column in expected:
            if column not in found:
                raise IsoParseError(path, "header lacks this column", line, column)

    def block_size(self, chunk_rows: int, bytes_per_row: int = 120) -> int:
        """A CSV block that parses to about ``chunk_rows`` rows (at least 64 KiB)."""
        return max(1 << 16, min(chunk_rows * bytes_per_row, 1 << 28))


def line_at(lines: Any, index: int) -> int:
    """The source line of value ``index``: ``lines`` is the first value's line or an array."""
    return lines + index if isinstance(lines, int) else int(lines[index])


def prices(path: Path, array: Any, column: str, lines: Any) -> Any:
    """A float64 array of price strings (blanks are null); fail naming the first bad value.

    ``lines`` is the source line of the first value (then one line per value) or an array.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_floating(array.type) or pa.types.is_integer(array.type):
        return pc.cast(array, pa.float64())
    trimmed = pc.utf8_trim_whitespace(array)
    trimmed = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
    try:
        return pc.cast(trimmed, pa.float64())
    except pa.ArrowInvalid:
        for index, value in enumerate(trimmed.to_pylist()):
            if value is None:
                continue
            try:
                float(value)
            except ValueError:
                line = line_at(lines, index)
                raise IsoParseError(path, f"non-numeric price {value!r}", line, column) from None
        raise


def parse_times(path: Path, array: Any, fmt: str, column: str, lines: Any) -> np.ndarray:
    """Microseconds since the epoch of timestamp strings; fail naming the first bad one.

    ``lines``: the source line of the first value (then one per value) or an array of lines.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    # A file repeats a few dozen distinct stamps over thousands of nodes: parse each once.
    encoded = pc.dictionary_encode(array)
    try:
        stamps = pc.strptime(pc.utf8_trim_whitespace(encoded.dictionary), format=fmt, unit="us")
        parsed = pc.take(stamps, encoded.indices)
    except pa.ArrowInvalid:
        for index, value in enumerate(array.to_pylist()):
            try:
                datetime.strptime((value or "").strip(), fmt)
            except ValueError:
                line = line_at(lines, index)
                raise IsoParseError(
                    path, f"bad timestamp {value!r} (expected {fmt})", line, column
                ) from None
        raise
    return parsed.cast(pa.int64()).to_numpy(zero_copy_only=False)


# ---------------------------------------------------------------------------------------------
# Time rules


def offsets_minutes(utc_us: np.ndarray, zone: ZoneInfo) -> np.ndarray:
    """UTC offset (minutes) of each UTC instant in ``zone``; US zones change on the hour."""
    import numpy as np

    if len(utc_us) == 0:
        return np.zeros(0, dtype=np.int16)
    hours = utc_us // US_PER_HOUR
    first, last = int(hours.min()), int(hours.max())
    table = np.array(
        [
            datetime.fromtimestamp(h * 3600, UTC).astimezone(zone).utcoffset().total_seconds() // 60
            for h in range(first, last + 1)
        ],
        dtype=np.int16,
    )
    return table[hours - first]


def local_day_hours(day: date, zone: ZoneInfo) -> tuple[int, int]:
    """(UTC microseconds of the local midnight starting ``day``, hours in that local day)."""
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    end = start + timedelta(days=1)
    start_utc = start.astimezone(UTC)
    hours = round((end.astimezone(UTC) - start_utc).total_seconds() / 3600)
    return int(start_utc.timestamp()) * 1_000_000, hours


def hour_ending_starts(
    path: Path,
    days: np.ndarray,
    labels: np.ndarray,
    repeat: np.ndarray | None,
    zone: ZoneInfo,
    lines: Any,
    column: str,
) -> np.ndarray:
    """UTC interval starts (us) of hour-ending labels 1-24 on local days (epoch day numbers).

    ``repeat`` marks the second copy of the fall-back hour (label 2). A label that the day
    does not have (2 on a spring-forward day, a repeat on any other) fails naming its line.
    """
    import numpy as np

    if len(days) == 0:
        return np.zeros(0, dtype=np.int64)
    first, last = int(days.min()), int(days.max())
    midnight = np.empty(last - first + 1, dtype=np.int64)
    length = np.empty(last - first + 1, dtype=np.int64)
    for offset in range(last - first + 1):
        day = date.fromordinal(EPOCH_ORDINAL + first + offset)
        midnight[offset], length[offset] = local_day_hours(day, zone)
    index = days - first
    day_length = length[index]
    repeat = np.zeros(len(labels), dtype=bool) if repeat is None else repeat
    ordinal = labels.astype(np.int64).copy()
    fall, spring = day_length == 25, day_length == 23
    ordinal[fall & ((labels > 2) | ((labels == 2) & repeat))] += 1
    ordinal[spring & (labels > 2)] -= 1
    bad = (
        (labels < 1) | (labels > 24) | (spring & (labels == 2)) | (repeat & ~(fall & (labels == 2)))
    )
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        day = date.fromordinal(EPOCH_ORDINAL + int(days[at]))
        what = "repeated-hour flag" if repeat[at] else "hour"
        raise IsoParseError(
            path,
            f"{what} {int(labels[at]):02d} does not exist on {day} in {zone.key}",
            line_at(lines, at),
            column,
        )
    return midnight[index] + (ordinal - 1) * US_PER_HOUR


def wall_to_utc(
    path: Path,
    wall_us: np.ndarray,
    locations: Sequence[str],
    zone: ZoneInfo,
    seen: dict[tuple[str, int], int],
    lines: Any,
    column: str,
) -> np.ndarray:
    """UTC instants of local wall times; a repeated ambiguous wall time per location (in file
    order, ``seen`` carried across chunks) is the second, standard-time copy."""
    import numpy as np

    hours = wall_us // US_PER_HOUR
    first, last = int(hours.min()), int(hours.max())
    early = np.empty(last - first + 1, dtype=np.int64)  # offset (us) of the first reading
    late = np.empty(last - first + 1, dtype=np.int64)  # of the second (differs if ambiguous)
    missing = np.zeros(last - first + 1, dtype=bool)
    for offset in range(last - first + 1):
        wall = datetime(1970, 1, 1) + timedelta(hours=first + offset)
        readings = []
        for fold in (0, 1):
            aware = wall.replace(tzinfo=zone, fold=fold)
            back = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
            readings.append(int(aware.utcoffset().total_seconds()) * 1_000_000)
            missing[offset] |= back != wall
        early[offset], late[offset] = readings
    index = hours - first
    if missing[index].any():
        at = int(np.flatnonzero(missing[index])[0])
        stamp = datetime(1970, 1, 1) + timedelta(microseconds=int(wall_us[at]))
        raise IsoParseError(
            path, f"local time {stamp} does not exist in {zone.key}", line_at(lines, at), column
        )
    utc = wall_us - early[index]
    ambiguous = np.flatnonzero(early[index] != late[index])
    for at in ambiguous.tolist():
        key = (locations[at], int(wall_us[at]))
        count = seen.get(key, 0)
        seen[key] = count + 1
        if count == 1:
            utc[at] = wall_us[at] - late[index[at]]
        # a third copy keeps the first reading: the duplicate check reports it
    return utc


def canonical_table(
    iso: str,
    market: Market,
    zone: ZoneInfo | None,
    start_utc: np.ndarray,
    location: Any,
    location_type: Any,
    lmp: Any,
    energy: Any,
    congestion: Any,
    loss: Any,
    line: np.ndarray,
    revision: np.ndarray | None = None,
    fixed_offset_minutes: int | None = None,
) -> pa.Table:
    """Assemble canonical columns; derives energy where only lmp, congestion and loss exist."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = len(start_utc)
    if fixed_offset_minutes is not None:
        offset = np.full(rows, fixed_offset_minutes, dtype=np.int16)
    else:
        offset = offsets_minutes(start_utc, zone)
    local = start_utc + offset.astype(np.int64) * US_PER_MINUTE
    if energy is None and congestion is not None and loss is not None:
        energy = pc.subtract(pc.subtract(lmp, congestion), loss)
    nulls = pa.nulls(rows, pa.float64())

    def constant(value: str) -> pa.Array:
        return pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(rows, dtype=np.int32)), pa.array([value], pa.string())
        )

    def text(values: Any) -> pa.Array:
        if isinstance(values, str):
            return constant(values)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if not pa.types.is_dictionary(values.type):
            values = pc.dictionary_encode(pc.cast(values, pa.string()))
        return values.cast(pa.dictionary(pa.int32(), pa.string()))

    columns = [
        constant(iso),
        constant(market.value),
        pa.array(start_utc, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array(start_utc + market.minutes * US_PER_MINUTE, pa.int64()).cast(
            pa.timestamp("us", tz="UTC")
        ),
        pa.array(local, pa.int64()).cast(pa.timestamp("us")),
        pa.array(offset, pa.int16()),
        text(location),
        text(location_type),
        lmp if lmp is not None else nulls,
        energy if energy is not None else nulls,
        congestion if congestion is not None else nulls,
        loss if loss is not None else nulls,
        pa.array(line, pa.int64()),
        pa.array(np.zeros(rows, dtype=np.int64) if revision is None else revision, pa.int64()),
    ]
    return pa.Table.from_arrays(columns, schema=canonical_schema(staging=True))


def epoch_days(path: Path, array: Any, fmt: str, column: str, lines: Any) -> np.ndarray:
    """Local dates (strings in ``fmt``) as days since 1970-01-01."""
    return parse_times(path, array, fmt, column, lines) // US_PER_DAY


def csv_batches(
    source: Any,
    path: Path,
    *,
    skip_rows: int,
    column_names: Sequence[str] | None,
    chunk_rows: int,
    bytes_per_row: int = 120,
    string_columns: Sequence[str] = (),
    float_columns: Sequence[str] = (),
    trailer_prefixes: Sequence[str] = (),
    text_prices: bool = False,
    include_columns: Sequence[str] = (),
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Stream a CSV as (index of the first row, record batch).

    Prices are parsed as numbers; when a value is not one, the rest of the file is read again
    as text so that :func:`prices` names its line (a file stream, which cannot be read again,
    is read as text from the start; so is ``text_prices``). Rows of another width are errors,
    except those starting with ``trailer_prefixes``. With ``include_columns``, only those
    columns are converted (the others are still split, so row widths are still checked): a
    column no reader uses is not worth its conversion, the costliest part of parsing.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def odd_row(row: Any) -> str:
        return "skip" if row.text.startswith(tuple(trailer_prefixes)) else "error"

    def stream(as_text: bool) -> Any:
        types = {c: pa.string() for c in string_columns}
        types.update({c: pa.string() if as_text else pa.float64() for c in float_columns})
        return pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(
                skip_rows=skip_rows,
                column_names=list(column_names) if column_names else None,
                block_size=max(1 << 16, min(chunk_rows * bytes_per_row, 1 << 27)),
                use_threads=False,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                strings_can_be_null=True,
                null_values=[""],
                include_columns=list(include_columns) or None,
            ),
            parse_options=pacsv.ParseOptions(
                invalid_row_handler=odd_row if trailer_prefixes else None
            ),
        )

    as_text = text_prices or not isinstance(source, str | Path)
    done = 0
    try:
        for batch in stream(as_text):
            for start in range(0, batch.num_rows, chunk_rows):
                yield done + start, batch.slice(start, chunk_rows)
            done += batch.num_rows
        return
    except pa.ArrowInvalid as exc:
        if as_text or "conversion error" not in str(exc).lower():
            raise IsoParseError(path, f"malformed CSV: {exc}", _row_line(str(exc), done)) from None
    seen = 0
    try:
        for batch in stream(True):
            if seen + batch.num_rows > done:
                batch = batch.slice(max(0, done - seen))
                first = max(done, seen)
                for start in range(0, batch.num_rows, chunk_rows):
                    yield first + start, batch.slice(start, chunk_rows)
            seen += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise IsoParseError(path, f"malformed CSV: {exc}", _row_line(str(exc), seen)) from None


def _row_line(message: str, done: int) -> int | None:
    """The line number pyarrow names in a CSV error (``Row #N``), if any."""
    match = re.search(r"Row #(\d+)", message)
    return int(match.group(1)) if match else None


def open_zip_csv(path: Path) -> tuple[Any, Any]:
    """(zip file, its one CSV member opened for streaming); a truncated zip fails clearly."""
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
        names = [n for n in archive.namelist() if n.lower().endswith(".csv")]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise IsoParseError(path, f"truncated or corrupt zip ({exc})") from None
    if len(names) != 1:
        archive.close()
        raise IsoParseError(path, f"expected one CSV in the zip, found {len(names)}")
    return archive, archive.open(names[0])


def guard_zip(path: Path, batches: Iterator[Any]) -> Iterator[Any]:
    """Re-raise a zip that breaks while streaming (bad CRC, cut short) as a parse error."""
    import zipfile
    import zlib

    try:
        yield from batches
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise IsoParseError(path, f"truncated or corrupt zip ({exc})") from None
    except OSError as exc:  # pyarrow wraps the stream's error
        if "zip" in str(exc).lower() or "crc" in str(exc).lower() or "compressed" in str(exc):
            raise IsoParseError(path, f"truncated or corrupt zip ({exc})") from None
        raise


@contextmanager
def zip_member(path: Path) -> Iterator[BinaryIO]:
    """The one CSV member of a zip, open for streaming while the block runs."""
    archive, member = open_zip_csv(path)
    with archive, member:
        yield member


def first_lines(source: Path | BinaryIO, count: int) -> list[str]:
    """The first ``count`` lines of a text file (or an open binary stream), BOM stripped."""
    lines: list[str] = []
    with ExitStack() as stack:
        stream = stack.enter_context(open(source, "rb")) if isinstance(source, Path) else source
        for raw in stream:
            lines.append(raw.decode("utf-8-sig", errors="replace").rstrip("\r\n"))
            if len(lines) >= count:
                break
    return lines


def split_header(line: str) -> list[str]:
    """The fields of a CSV header line."""
    import csv

    return next(csv.reader([line])) if line else []
