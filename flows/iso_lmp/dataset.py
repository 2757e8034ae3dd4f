"""Raw files to the Parquet dataset: staging per file, atomic publication per partition.

1. :func:`convert_files` parses each raw file with its ISO's streaming reader and writes its
   rows to local staging, one Parquet file per UTC month it touches, row groups of at most
   ``rows_per_chunk`` rows. A file's staging directory appears whole (rename) or not at all;
   an unchanged file (same size and modification time) is not parsed again.
2. :func:`publish_partition` builds one ``iso/market/year/month`` partition from every staged
   file of that month with DuckDB (memory-limited, spills): when several rows share
   (market, location, interval) the later revision wins (PJM ``version_nbr``, else the later
   file by modification time, then name). It writes a new version directory, then swaps the
   partition's ``_manifest.json`` pointer (atomic), then deletes older versions. Readers follow
   the manifest (:func:`current_files`); re-converting a month replaces it. A partition
   whose staged parts one :func:`convert_files` call wrote, disjoint and in time order, was
   already written as they were staged (:mod:`flows.iso_lmp.onepass`) and is copied instead.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from flows.iso_lmp.base import (
    CANONICAL_COLUMNS,
    PUBLISHED_PARQUET,
    TEXT_COLUMNS,
    IsoParseError,
    Market,
    canonical_schema,
)
from flows.iso_lmp.formats.registry import iso_format
from flows.iso_lmp.onepass import OnePass
from headroom.errors import BadInput, classify_oom, output_fault, output_faults
from headroom.isolation.guard import duckdb_share
from headroom.storage import publishing

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from headroom.storage import Storage

log = logging.getLogger(__name__)

STAGING = "_staging"
MARKER = "source.json"
MANIFEST = "_manifest.json"
STAGING_VERSION = 3
KEY_LIMIT_ROWS = 2_000_000
"""Above this many rows in one file, duplicates are found by DuckDB on disk, not in memory."""
MIN_REPLACE_SHARE = 0.9
"""A published partition is replaced only by at least this share of its rows: a revised file
may drop a few intervals; a truncated one, or lost staging, would drop most of a month."""


@dataclass(frozen=True)
class RawFile:
    """A raw file as published, with the ISO, market and operating day its name tells."""

    iso: str
    market: Market
    day: date
    path: Path


def discover(
    raw: Path,
    isos: Iterable[str],
    markets: Iterable[Market] | None,
    start: date,
    end: date,
) -> list[RawFile]:
    """Raw files of ``isos`` and ``markets`` for days ``start``..``end`` (inclusive) in ``raw``
    or its per-ISO sub-directories, in (iso, market, day, name) order."""
    wanted = set(markets) if markets is not None else None
    found: dict[Path, RawFile] = {}
    for iso in isos:
        fmt = iso_format(iso)
        for directory in (raw, raw / fmt.iso_id.lower(), raw / fmt.iso_id):
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                market = fmt.market_of(path.name)
                if market is None or (wanted is not None and market not in wanted):
                    continue
                day = fmt.day_of(path.name)
                if day is not None and start <= day <= end and path.is_file():
                    found[path.resolve()] = RawFile(fmt.iso_id, market, day, path)
    return sorted(found.values(), key=lambda f: (f.iso, f.market.value, f.day, f.path.name))


# ---------------------------------------------------------------------------------------------
# Staging


def staging_root_for(raw: str | os.PathLike[str]) -> Path:
    """Where converted files wait for publication: next to the raw files, never published."""
    return Path(raw) / STAGING


def convert_files(
    iso: str,
    files: list[str],
    staging: str,
    rows_per_chunk: int,
    out: str | None = None,
    min_replace_share: float = MIN_REPLACE_SHARE,
) -> dict[str, Any]:
    """Convert raw files of one ISO in turn (a bad file is reported, the others go on); with
    ``out``, then publish every (market, month) partition they touch. A staging directory
    that cannot be written raises OutputUnavailable (once, not against every file)."""
    fmt = iso_format(iso)
    results = []
    written = OnePass(Path(staging), rows_per_chunk) if out is not None else None
    try:
        for name in files:
            started = time.monotonic()
            market = fmt.market_of(Path(name).name)
            try:
                if market is None:
                    raise IsoParseError(name, f"not a {fmt.iso_id} price file name")
                result = convert_file(
                    iso, market.value, name, staging, rows_per_chunk, written=written
                )
            except (IsoParseError, OSError) as exc:
                # A write that the staging disk refused: not this file's fault (a permission
                # error reading the file names the file, and stays the file's).
                fault = None if name in str(exc) else output_fault(exc, staging)
                if fault is not None:
                    raise fault from None
                log.warning("%s: %s", name, exc)
                result = {"file": name, "error": str(exc)}
            except Exception as exc:  # a failure no parser foresaw is still this file's alone
                if classify_oom(exc):
                    raise  # the guard's business: an OOM is retried with a smaller chunk
                log.warning("%s: unexpected %s: %s", name, type(exc).__name__, exc)
                result = {"file": name, "error": f"{Path(name).name}: {type(exc).__name__}: {exc}"}
            if "error" in result and written is not None and market is not None:
                written.file_failed(market.value)
            result["seconds"] = round(time.monotonic() - started, 3)
            result["market"] = market.value if market else None
            results.append(result)
        partitions: list[dict[str, Any]] = []
        if out is not None:
            touched = sorted({(r["market"], m) for r in results for m in r.get("months", [])})
            partitions = publish_partitions(
                iso, touched, staging, out, rows_per_chunk, written, min_replace_share
            )
    finally:
        if written is not None:
            written.close()
    return {"iso": fmt.iso_id, "files": results, "partitions": partitions}


def convert_file(
    iso: str,
    market: str,
    path: str,
    staging: str,
    rows_per_chunk: int,
    key_limit: int = KEY_LIMIT_ROWS,
    written: OnePass | None = None,
) -> dict[str, Any]:
    """Stage one raw file (skipped when unchanged); returns its rows and UTC months.
    ``written`` is also given the staged rows (see :mod:`flows.iso_lmp.onepass`)."""
    import pyarrow.parquet as pq

    fmt, kind, source = iso_format(iso), Market(market), Path(path)
    stat = source.stat()
    signature = {
        "file": source.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "version": STAGING_VERSION,
    }
    final = Path(staging) / fmt.iso_id / kind.value / source.name
    previous = _read_marker(final)
    if previous and all(previous.get(k) == v for k, v in signature.items()):
        return {
            "file": path,
            "rows": previous["rows"],
            "months": previous["months"],
            "skipped": True,
        }
    if written is not None:
        written.begin(kind.value, source.name, signature)
    writers: dict[str, pq.ParquetWriter] = {}
    keys = DuplicateKeys(source, fmt.time_column, key_limit)
    rows = 0
    spans: dict[str, list[int]] = {}
    with publishing(final, directory=True) as temporary:
        try:
            for table in fmt.read(source, kind, rows_per_chunk):
                rows += table.num_rows
                starts = _starts_us(table)
                keys.add(table, starts)
                for month, part, low, high in _by_month(table, starts):
                    _widen(spans, month, low, high)
                    if month not in writers:
                        # Local, read whole by publication: no statistics; dictionaries only
                        # for the text columns; lz4, which costs less than writing the
                        # uncompressed bytes (a tenth of them) to disk.
                        writers[month] = pq.ParquetWriter(
                            temporary / f"{month}.parquet",
                            canonical_schema(staging=True),
                            compression="lz4",
                            use_dictionary=list(TEXT_COLUMNS),
                            write_statistics=False,
                        )
                    writers[month].write_table(part, row_group_size=rows_per_chunk)
                    if written is not None:
                        written.add(kind.value, month, source.name, part)
            for writer in writers.values():
                writer.close()
            writers.clear()
            keys.check(sorted(temporary.glob("*.parquet")))
            marker = {
                **signature,
                "rows": rows,
                "months": sorted(spans),
                "spans": spans,
                "revised": keys.revised,
            }
            (temporary / MARKER).write_text(json.dumps(marker))
        finally:
            for writer in writers.values():
                writer.close()
    log.info("%s: %d rows staged in %d months", source.name, rows, len(marker["months"]))
    return {"file": path, "rows": rows, "months": marker["months"], "skipped": False}


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _starts_us(table: pa.Table) -> np.ndarray:
    """The chunk's interval starts as int64 microseconds (its canonical unit), converted once."""
    import pyarrow as pa

    return table.column("interval_start_utc").combine_chunks().cast(pa.int64()).to_numpy()


def _by_month(table: pa.Table, starts: np.ndarray) -> Iterator[tuple[str, pa.Table, int, int]]:
    """Split a table by the UTC month (``YYYY-MM``) of its interval starts: (month, rows, first
    and last start in us)."""
    import numpy as np
    import pyarrow as pa

    if not len(starts):
        return
    low, high = int(starts.min()), int(starts.max())
    # Most chunks lie in one month: tell from the ends, not a conversion of every start.
    first, last = np.array([low, high]).astype("datetime64[us]").astype("datetime64[M]")
    if first == last:
        yield str(first), table, low, high
        return
    months = starts.astype("datetime64[us]").astype("datetime64[M]")
    for month in np.unique(months):
        inside = months == month
        yield (
            str(month),
            table.filter(pa.array(inside)),
            int(starts[inside].min()),
            int(starts[inside].max()),
        )


def _widen(spans: dict[str, list[int]], month: str, low: int, high: int) -> None:
    """Keep each month's first and last interval start (us): publication skips the
    de-duplication when no two files' spans overlap."""
    span = spans.setdefault(month, [low, high])
    span[0], span[1] = min(span[0], low), max(span[1], high)


class DuplicateKeys:
    """Finds a (location, interval, revision) that a file carries twice: not a DST repeat."""

    def __init__(self, path: Path, column: str, limit: int) -> None:
        self.path, self.column, self.limit = path, column, limit
        self.names: pa.Array | None = None
        """Every location seen so far; a location's code is its position here."""
        self.parts: list[np.ndarray] = []
        self.rows = 0
        self.revised = False
        """Whether a (location, interval) comes in more than one revision."""

    def add(self, table: pa.Table, starts: np.ndarray) -> None:
        """One chunk's keys (``starts``: its interval starts in us, see :func:`_starts_us`)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        self.rows += table.num_rows
        if self.rows > self.limit:
            self.parts = []  # too many for memory: checked on disk instead
            self.revised = True  # not known: publication de-duplicates
            return
        # Codes in Arrow, not a Python dict: a file's thousands of nodes cost per-name calls.
        # Staged tables carry location dictionary-encoded (see canonical_schema).
        encoded = table.column("location").combine_chunks()
        if not pa.types.is_dictionary(encoded.type):
            encoded = pc.dictionary_encode(encoded, null_encoding="encode")
        distinct = encoded.dictionary
        if self.names is None:
            self.names = distinct.slice(0, 0)
        found = pc.index_in(distinct, value_set=self.names)
        if found.null_count:
            self.names = pa.concat_arrays([self.names, distinct.filter(pc.is_null(found))])
            found = pc.index_in(distinct, value_set=self.names)
        codes = found.to_numpy().astype(np.int64)
        position = encoded.indices.to_numpy()
        self.parts.append(
            np.stack(
                [
                    codes[position],
                    starts,
                    table.column("_revision").to_numpy(),
                    table.column("_line").to_numpy(),
                ]
            )
        )

    def check(self, staged: list[Path]) -> None:
        """Raise naming the second occurrence of the first duplicated interval."""
        if self.rows > self.limit:
            found = _duplicate_on_disk(staged)
        else:
            found = self._duplicate_in_memory()
        if found:
            location, start_us, first, second = found
            stamp = _utc_text(start_us)
            raise IsoParseError(
                self.path,
                f"duplicate interval {stamp} for {location} (first at line {first}); "
                "not a DST repeat",
                second,
                self.column,
            )

    def _duplicate_in_memory(self) -> tuple[str, int, int, int] | None:
        import numpy as np

        if not self.parts:
            return None
        keys = np.concatenate(self.parts, axis=1)
        if _all_distinct(keys[0], keys[1]):
            return None  # the usual file: no (location, interval) twice, so nothing to rank
        order = np.lexsort((keys[3], keys[2], keys[1], keys[0]))
        ordered = keys[:, order]
        self.revised = bool(np.all(ordered[:2, 1:] == ordered[:2, :-1], axis=0).any())
        same = np.all(ordered[:3, 1:] == ordered[:3, :-1], axis=0)
        if not same.any():
            return None
        hits = np.flatnonzero(same)
        at = hits[np.argmin(ordered[3, hits + 1])]
        return (
            self.names[int(ordered[0, at])].as_py(),
            int(ordered[1, at]),
            int(ordered[3, at]),
            int(ordered[3, at + 1]),
        )


def _all_distinct(codes: np.ndarray, starts: np.ndarray) -> bool:
    """Whether no (location code, interval start) pair occurs twice.

    Interval starts are a few dozen multiples of one step (their gcd): the pair packs into
    one int64 key of (code, step number), counted in a table when that is small, else
    sorted, instead of a four-key lexsort (False also when the pair cannot be packed)."""
    import numpy as np

    if len(codes) < 2:
        return True
    since = starts - int(starts.min())
    steps = since // (int(np.gcd.reduce(since)) or 1)
    span = int(steps.max()) + 1
    slots = (int(codes.max()) + 1) * span
    if slots >= 1 << 62:
        return False
    key = codes * span + steps
    if slots <= max(4 * len(codes), 1 << 20):
        return int(np.bincount(key).max()) <= 1
    packed = np.sort(key)
    return not bool((packed[1:] == packed[:-1]).any())


def _duplicate_on_disk(staged: list[Path]) -> tuple[str, int, int, int] | None:
    import duckdb

    if not staged:
        return None
    con = duckdb.connect()
    try:
        con.execute("SET memory_limit = ?", [duckdb_share()])
        con.execute("SET threads=1")
        row = con.execute(
            "SELECT location, epoch_us(interval_start_utc), min(_line), "
            "list_sort(list(_line))[2] AS second FROM read_parquet(?) "
            "GROUP BY location, interval_start_utc, _revision HAVING count(*) > 1 "
            "ORDER BY second LIMIT 1",
            [[str(p) for p in staged]],
        ).fetchone()
    finally:
        con.close()
    if row is None:
        return None
    return row[0], int(row[1]), int(row[2]), int(row[3])


def _utc_text(start_us: int) -> str:
    from datetime import UTC, datetime, timedelta

    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=start_us)
    return moment.strftime("%Y-%m-%dT%H:%MZ")


# ---------------------------------------------------------------------------------------------
# Publication


def partition_path(iso: str, market: str, month: str) -> str:
    """The relative directory of an (iso, market, UTC month) partition."""
    year, number = month.split("-")
    return f"iso={iso}/market={market}/year={year}/month={number}"


def _staged(staging: str, iso: str, market: str, month: str) -> list[tuple[Path, dict]]:
    found = []
    for directory in sorted((Path(staging) / iso / market).glob("[!.]*")):
        marker = _read_marker(directory)
        part = directory / f"{month}.parquet"
        if marker and part.exists() and marker.get("version") == STAGING_VERSION:
            found.append((part, marker))
    return found


def disjoint_in_time(staged: list[tuple[Path, dict]], month: str) -> list[Path] | None:
    """The parts in time order when no two overlap and none carries revisions, else None:
    then no row can have a rival and the parts are simply concatenated."""
    if any(marker["revised"] for _, marker in staged):
        return None
    spans = sorted((marker["spans"][month], part) for part, marker in staged)
    for (before, _), (after, _) in zip(spans, spans[1:], strict=False):
        if after[0] <= before[1]:
            return None
    return [part for _, part in spans]


def publish_partition(
    iso: str,
    market: str,
    month: str,
    staging: str,
    out: str,
    rows_per_chunk: int,
    written: OnePass | None = None,
    min_replace_share: float = MIN_REPLACE_SHARE,
) -> dict[str, Any]:
    """Build one partition from its staged files, later revisions winning; swap it in.
    ``written``: what the convert call wrote as it staged (used when it is the whole).
    A partition is never replaced by fewer rows than ``min_replace_share`` of its own
    (BadInput, the published partition kept); an output that cannot be written:
    OutputUnavailable."""
    with output_faults(out):
        from headroom.storage import open_storage

        if not re.fullmatch(r"\d{4}-\d{2}", month):
            raise ValueError(f"month: {month!r} is not YYYY-MM")
        storage = open_storage(out)
        relative = partition_path(iso, market, month)
        staged = _staged(staging, iso, market, month)
        parts = [(p, int(m["mtime_ns"]), m["file"]) for p, m in staged]
        if not parts:
            return {"partition": relative, "rows": 0, "files": 0}
        version = f"v-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        data = posixpath.join(relative, version, "part-00000.parquet")
        in_order = disjoint_in_time(staged, month)
        ready = None
        if written is not None and in_order is not None:
            ready = written.take(market, month, in_order, {p: m for p, m in staged})
        if ready is not None:
            local, rows, checksum = ready
            storage.put_file(local, data)
        elif in_order is not None:
            rows, checksum = _write_parquet(
                storage, data, _concatenated(in_order, rows_per_chunk), rows_per_chunk
            )
        else:
            rows, checksum = _deduplicated(parts, staging, storage, data, rows_per_chunk)
        previous = storage.read_json(posixpath.join(relative, MANIFEST))
        try:
            check_replacement(
                relative, parts, (previous or {}).get("rows", 0), rows, min_replace_share
            )
        except BadInput:
            storage.filesystem.delete_dir(storage.path(relative, version))
            raise
        manifest = {
            "iso": iso,
            "market": market,
            "month": month,
            "version": version,
            "files": [posixpath.join(version, "part-00000.parquet")],
            "rows": rows,
            "checksum": checksum,
            "sources": sorted(p[2] for p in parts),
            "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        storage.write_json(posixpath.join(relative, MANIFEST), manifest)  # the atomic swap
        removed = _remove_old_versions(storage, relative, version)
        log.info(
            "%s: %d rows from %d files (%s, %d old versions removed)",
            relative,
            rows,
            len(parts),
            "written in one pass" if ready else "concatenated" if in_order else "de-duplicated",
            removed,
        )
        return {"partition": relative, "rows": rows, "files": len(parts), "checksum": checksum}


def check_replacement(
    relative: str, parts: list[tuple[Path, int, str]], published: int, rows: int, share: float
) -> None:
    """Raise BadInput naming the partition and its raw files when ``rows`` would replace the
    ``published`` ones with fewer than ``share`` of them (0 accepts any replacement)."""
    if not published or share <= 0 or (rows and rows >= share * published):
        return
    sources = ", ".join(sorted({p[2] for p in parts}))
    raise BadInput(
        f"{relative}: {rows:,} rows from {sources} would replace the {published:,} published "
        f"(fewer than {share:.0%}); the published partition is kept. Set min_replace_share "
        "lower to accept it"
    )


def _concatenated(parts: list[Path], rows_per_chunk: int) -> Iterator[pa.RecordBatch]:
    """The canonical columns of staged parts, in order, one row group at a time."""
    import pyarrow.parquet as pq

    for part in parts:
        with pq.ParquetFile(part) as reader:
            yield from reader.iter_batches(
                batch_size=rows_per_chunk, columns=list(CANONICAL_COLUMNS)
            )


def _deduplicated(parts, staging: str, storage: Storage, data: str, rows_per_chunk: int):
    """Keep one row per (market, location, interval): the later revision, then later file."""
    import duckdb

    # Later file = newer raw file (modification time), then later name: rank ascending.
    ranked = sorted(parts, key=lambda p: (p[1], p[2]))
    files = [str(part) for part, _, _ in ranked]
    spill = Path(staging) / ".duckdb-spill"
    spill.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.execute("SET memory_limit = ?", [duckdb_share()])
        con.execute("SET threads=1")
        con.execute("SET TimeZone='UTC'")
        con.execute("SET temp_directory = ?", [str(spill)])
        query = con.sql(
            "WITH ranks AS (SELECT unnest($files) AS filename, "
            "generate_subscripts($files, 1) AS file_rank) "
            f"SELECT {', '.join(CANONICAL_COLUMNS)} FROM read_parquet($files, filename=true) "
            "JOIN ranks USING (filename) "
            "QUALIFY row_number() OVER (PARTITION BY market, location, interval_start_utc "
            "ORDER BY _revision DESC, file_rank DESC, _line DESC) = 1 "
            "ORDER BY interval_start_utc, location",
            params={"files": files},
        )
        return _write_parquet(storage, data, query.to_arrow_reader(rows_per_chunk), rows_per_chunk)
    finally:
        con.close()


def _write_parquet(storage: Storage, relative: str, reader: Any, rows_per_chunk: int):
    """Write batches to one Parquet file under a temporary name; (rows, content checksum)."""
    import pyarrow.parquet as pq

    from flows.iso_lmp.onepass import row_groups

    schema = canonical_schema(encoded=True)
    digest = Checksum(schema)
    rows = 0
    with storage.atomic_output(relative) as temporary:
        with storage.filesystem.open_output_stream(temporary) as stream:
            with pq.ParquetWriter(stream, schema, **PUBLISHED_PARQUET) as writer:
                for table in row_groups(reader, schema, rows_per_chunk):
                    writer.write_table(table, row_group_size=rows_per_chunk)
                    digest.update(table)
                    rows += table.num_rows
    return rows, digest.hexdigest()


class Checksum:
    """XXH3-128 of a table's values, column by column: independent of how rows are chunked
    and of how text is held. A text column (plain or dictionary-encoded) is hashed as the
    sequence of its values' own 8-byte XXH3 digests (a null: eight zero bytes), each
    dictionary entry hashed once. A fast non-cryptographic hash is enough: this checksum
    detects change, it is no defence against a forged file."""

    def __init__(self, schema: pa.Schema) -> None:
        self.hashes = {name: xxhash.xxh3_128() for name in schema.names}
        self.text = {f.name for f in schema if _is_text(f.type)}
        self._entries: dict[bytes, np.ndarray] = {}

    def update(self, table: pa.Table) -> None:
        import pyarrow as pa

        # Chunk by chunk: no copy of the combined column is needed.
        for name, hasher in self.hashes.items():
            for column in table.column(name).chunks:
                if not len(column):
                    continue
                if name in self.text:
                    hasher.update(self._text_digests(column))
                else:
                    values = (
                        column.cast(pa.float64()) if pa.types.is_floating(column.type) else column
                    )
                    hasher.update(values.to_numpy(zero_copy_only=False))

    def hexdigest(self) -> str:
        total = xxhash.xxh3_128()
        for name in sorted(self.hashes):
            total.update(self.hashes[name].digest())
        return total.hexdigest()

    def _text_digests(self, column: pa.Array) -> np.ndarray:
        """The 8-byte digest of each value of a text chunk, in row order."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(column)
        entries = self._entry_digests(column.dictionary)
        indices = column.indices
        if indices.null_count:
            indices = pc.fill_null(indices, len(entries) - 1)  # the trailing null digest
        return entries[indices.to_numpy().astype(np.intp, copy=False)]

    def _entry_digests(self, dictionary: pa.Array) -> np.ndarray:
        """Digests of a dictionary's entries, then the null digest; kept by the dictionary's
        content (one ISO's files repeat the same locations, in the same order)."""
        import numpy as np

        key = None
        if not dictionary.null_count:
            buffers = dictionary.buffers()
            offsets = np.frombuffer(buffers[1], dtype=np.int32)[
                dictionary.offset : dictionary.offset + len(dictionary) + 1
            ]
            content = xxhash.xxh3_128(np.diff(offsets))
            if buffers[2] is not None:
                content.update(memoryview(buffers[2])[offsets[0] : offsets[-1]])
            key = content.digest()
            found = self._entries.get(key)
            if found is not None:
                return found
        digests = np.zeros(len(dictionary) + 1, dtype="<u8")
        for index, value in enumerate(dictionary.to_pylist()):
            if value is not None:
                digests[index] = xxhash.xxh3_64_intdigest(value.encode())
        if key is not None:
            if len(self._entries) >= 256:
                self._entries.clear()
            self._entries[key] = digests
        return digests


def _is_text(type_: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_string(type_) or (
        pa.types.is_dictionary(type_) and pa.types.is_string(type_.value_type)
    )


def _remove_old_versions(storage: Storage, relative: str, keep: str) -> int:
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(storage.path(relative), allow_not_found=True)
    removed = 0
    for info in storage.filesystem.get_file_info(selector):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("v-"):
            if info.base_name != keep:
                storage.filesystem.delete_dir(info.path)
                removed += 1
    return removed


# ---------------------------------------------------------------------------------------------
# Reading the dataset


def manifests(out: str) -> list[dict[str, Any]]:
    """Every partition's manifest (with its ``partition`` path), in path order."""
    import pyarrow.fs as pafs

    from headroom.storage import open_storage

    storage = open_storage(out)
    selector = pafs.FileSelector(storage.root, recursive=True, allow_not_found=True)
    found = []
    for info in storage.filesystem.get_file_info(selector):
        if info.type == pafs.FileType.File and info.base_name == MANIFEST:
            relative = posixpath.relpath(posixpath.dirname(info.path), storage.root)
            document = storage.read_json(posixpath.join(relative, MANIFEST))
            found.append({**document, "partition": relative})
    return sorted(found, key=lambda m: m["partition"])


def current_files(out: str) -> list[str]:
    """Full paths of the data files the manifests point at (what a reader should read)."""
    from headroom.storage import open_storage

    storage = open_storage(out)
    return [storage.path(m["partition"], name) for m in manifests(out) for name in m["files"]]


def read_dataset(out: str, iso: str | None = None) -> pa.Table:
    """The whole current dataset (or one ISO) as a table: for tests and small checks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from headroom.storage import open_storage

    storage = open_storage(out)
    tables = [
        pq.read_table(path, filesystem=storage.filesystem)
        for path in current_files(out)
        if iso is None or f"/iso={iso}/" in f"/{posixpath.relpath(path, storage.root)}"
    ]
    return pa.concat_tables(tables) if tables else canonical_schema().empty_table()


__all__ = [
    "RawFile",
    "convert_file",
    "convert_files",
    "current_files",
    "discover",
    "manifests",
    "publish_partition",
    "read_dataset",
]


def publish_partitions(
    iso: str,
    partitions: list[list[str]],
    staging: str,
    out: str,
    rows_per_chunk: int,
    written: OnePass | None = None,
    min_replace_share: float = MIN_REPLACE_SHARE,
) -> list[dict[str, Any]]:
    """Publish several (market, month) partitions of one ISO, each swapped in on its own; a
    partition refused as bad input is reported (``error``), the others go on."""
    results = []
    for market, month in partitions:
        try:
            results.append(
                publish_partition(
                    iso, market, month, staging, out, rows_per_chunk, written, min_replace_share
                )
            )
        except BadInput as exc:
            log.error("%s", exc)
            results.append({"partition": partition_path(iso, market, month), "error": str(exc)})
    return results
