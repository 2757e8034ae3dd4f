"""Partitions written while their raw files are staged, so publication need not read them back.

Publishing a partition whose staged parts are disjoint in time is a plain concatenation of
those parts in time order (see :func:`flows.iso_lmp.dataset.disjoint_in_time`). When one
:func:`~flows.iso_lmp.dataset.convert_files` call stages every part of a partition, in that
order, the concatenation is exactly what the call produced: :class:`OnePass` writes it to a
local file as the rows go by (the same rows in the same order, the same checksum; row groups
may be shorter) and publication copies that file instead of reading every staged part again.
Whenever that is not certain (a file that failed after some of its rows went by, a part staged
by an earlier call, overlapping or revised parts), the partition is published the usual way.
Rows wait for a full row group in at most about one chunk in all: past that, other partitions
write a shorter one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.iso_lmp.base import PUBLISHED_PARQUET, canonical_schema

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

PREFIX = ".onepass-"
"""Folders of partitions being written, under the staging root: ``.onepass-<pid>-<id>``."""


class RowGroups:
    """Gathers tables into row groups of exactly ``rows_per_chunk`` rows (the last may be
    shorter): a staged part holds one raw file's rows, far fewer, and a row group per part
    made writing and hashing per-call overhead rather than per-row work."""

    def __init__(self, schema: pa.Schema, rows_per_chunk: int) -> None:
        self.schema, self.rows_per_chunk = schema, rows_per_chunk
        self.pending: list[pa.Table] = []
        self.held = 0

    def add(self, table: pa.Table) -> Iterator[pa.Table]:
        """The row groups that ``table`` completes."""
        import pyarrow as pa

        table = table.select(self.schema.names).cast(self.schema)
        while table.num_rows:
            taken = table.slice(0, self.rows_per_chunk - self.held)
            table = table.slice(taken.num_rows)
            self.pending.append(taken)
            self.held += taken.num_rows
            if self.held == self.rows_per_chunk:
                yield pa.concat_tables(self.pending)
                self.pending, self.held = [], 0

    def rest(self) -> Iterator[pa.Table]:
        """The last, shorter row group, if any."""
        import pyarrow as pa

        if self.held:
            yield pa.concat_tables(self.pending)
            self.pending, self.held = [], 0


def row_groups(batches: Iterable[Any], schema: pa.Schema, rows_per_chunk: int):
    """Record batches (or tables) as row groups of ``rows_per_chunk`` rows of ``schema``."""
    import pyarrow as pa

    groups = RowGroups(schema, rows_per_chunk)
    for batch in batches:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        yield from groups.add(table)
    yield from groups.rest()


class _Partition:
    """One (market, month) being written: its file, checksum and the raw files fed in."""

    def __init__(self, path: Path, rows_per_chunk: int) -> None:
        import pyarrow.parquet as pq

        from flows.iso_lmp.dataset import Checksum

        schema = canonical_schema(encoded=True)
        self.path = path
        self.writer: pq.ParquetWriter | None = pq.ParquetWriter(path, schema, **PUBLISHED_PARQUET)
        self.groups = RowGroups(schema, rows_per_chunk)
        self.digest = Checksum(schema)
        self.rows = 0
        self.sources: list[str] = []
        self.rows_per_chunk = rows_per_chunk

    def add(self, source: str, table: pa.Table) -> None:
        if not self.sources or self.sources[-1] != source:
            self.sources.append(source)
        for group in self.groups.add(table):
            self._write(group)

    def flush(self) -> None:
        for group in self.groups.rest():
            self._write(group)

    def finish(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.path.unlink(missing_ok=True)

    def _write(self, group: pa.Table) -> None:
        assert self.writer is not None
        self.writer.write_table(group, row_group_size=self.rows_per_chunk)
        self.digest.update(group)
        self.rows += group.num_rows


class OnePass:
    """The partitions of one convert call, written as its files are staged (in ``root``)."""

    def __init__(self, root: Path, rows_per_chunk: int) -> None:
        _remove_orphans(root)
        self.root = root / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.rows_per_chunk = rows_per_chunk
        self.partitions: dict[tuple[str, str], _Partition] = {}
        self.failed_markets: set[str] = set()
        self.begun: dict[tuple[str, str], tuple[int, int]] = {}

    def begin(self, market: str, source: str, signature: dict[str, Any]) -> None:
        """Raw file ``source`` of ``market`` (size and modification time in ``signature``)
        starts staging. A name staged twice in one call (the same file in two folders)
        replaces its first staging: give the market up."""
        if (market, source) in self.begun:
            self.file_failed(market)
        self.begun[(market, source)] = (signature["size"], signature["mtime_ns"])

    def add(self, market: str, month: str, source: str, table: pa.Table) -> None:
        """Rows of raw file ``source`` staged for (market, month), in staging order."""
        key = (market, month)
        if market in self.failed_markets:
            return
        partition = self.partitions.get(key)
        if partition is None:
            self.root.mkdir(parents=True, exist_ok=True)
            partition = _Partition(self.root / f"{market}-{month}.parquet", self.rows_per_chunk)
            self.partitions[key] = partition
        partition.add(source, table)
        self._bound_memory(key)

    def file_failed(self, market: str) -> None:
        """A file of ``market`` failed after some of its rows may have gone by."""
        self.failed_markets.add(market)
        for key in [k for k in self.partitions if k[0] == market]:
            self.partitions.pop(key).drop()

    def take(
        self, market: str, month: str, in_order: list[Path], markers: dict[Path, dict[str, Any]]
    ) -> tuple[Path, int, str] | None:
        """(file, rows, checksum) of the partition when it is exactly ``in_order``'s parts
        (staged as ``<raw file name>/<month>.parquet``, with their ``markers``) concatenated,
        else None. The markers tell a part that another run staged again meanwhile."""
        partition = self.partitions.get((market, month))
        if partition is None or market in self.failed_markets:
            return None
        if [part.parent.name for part in in_order] != partition.sources:
            return None
        for part in in_order:
            marker = markers[part]
            staged_as = (marker["size"], marker["mtime_ns"])
            if self.begun.get((market, part.parent.name)) != staged_as:
                return None
        partition.finish()
        return partition.path, partition.rows, partition.digest.hexdigest()

    def close(self) -> None:
        for partition in self.partitions.values():
            partition.drop()
        self.partitions.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def _bound_memory(self, current: tuple[str, str]) -> None:
        """Hold at most about one chunk of rows waiting in all partitions together: past
        that, the others write what they hold as a shorter row group."""
        held = sum(p.groups.held for p in self.partitions.values())
        for key, partition in self.partitions.items():
            if held <= self.rows_per_chunk:
                break
            if key != current and partition.groups.held:
                held -= partition.groups.held
                partition.flush()


def _remove_orphans(root: Path) -> None:
    """Delete what calls killed before their clean-up (their process is gone) left behind."""
    for directory in root.glob(f"{PREFIX}*"):
        try:
            os.kill(int(directory.name[len(PREFIX) :].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(directory, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


__all__ = ["OnePass", "RowGroups", "row_groups"]
