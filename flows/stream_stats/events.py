"""One micro-batch of transaction events, columnar, and the interface every source offers.

Pure logic without prefect. :class:`EventBatch` holds events in stream order as numpy
columns with the key fields dictionary-encoded; :class:`Source` is what the consumer loop
asks of a source (flows.stream_stats.sources: embedded, redis_streams, kafka).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from headroom.errors import BadInput

# The flat fields of one stream entry, in the order the producer writes them.
FIELDS = (
    "transaction_id",
    "ts",
    "customer_id",
    "merchant_category",
    "channel",
    "amount",
    "is_fraud",
)
KEY_FIELDS = ("merchant_category", "channel")


@dataclass
class EventBatch:
    """Events in stream order as numpy columns; key fields dictionary-encoded."""

    id_hi: np.ndarray
    id_lo: np.ndarray
    ts: np.ndarray
    customer_id: np.ndarray
    amount: np.ndarray
    is_fraud: np.ndarray
    keys: dict[str, tuple[np.ndarray, list[str]]]
    ack: bytes | None = None  # the source's acknowledgement (Redis: XACK commands)
    ack_replies: int = 1  # commands in ``ack``, each answered once
    rejects: list[tuple[str, str]] = field(default_factory=list)
    last: tuple[int, int] | None = None
    transaction_id: np.ndarray | None = None
    # Partitioned sources (Kafka): {partition: next offset} this batch reaches; id_hi is the
    # partition and id_lo the offset of each event.
    offsets: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self.ts)

    def last_id(self) -> tuple[int, int] | None:
        """The highest stream ID this batch consumed (rejected entries included)."""
        if self.last is not None:
            return self.last
        if len(self.ts) == 0:
            return None
        return int(self.id_hi[-1]), int(self.id_lo[-1])

    def after(self, last: tuple[int, int]) -> EventBatch:
        """The events whose stream ID is above ``last`` (already applied ones dropped)."""
        hi, lo = last
        keep = (self.id_hi > hi) | ((self.id_hi == hi) & (self.id_lo > lo))
        return self._keeping(keep, last=self.last_id())

    def after_offsets(self, offsets: dict[int, int]) -> EventBatch:
        """The events at or past the sink's next offset of their partition."""
        if len(self.ts) == 0:
            return self
        floor = np.zeros(int(self.id_hi.max()) + 1, dtype=np.int64)
        for partition, offset in offsets.items():
            if partition < len(floor):
                floor[partition] = offset
        keep = self.id_lo >= floor[self.id_hi]
        return self._keeping(keep, last=self.last)

    def _keeping(self, keep: np.ndarray, last: tuple[int, int] | None) -> EventBatch:
        """The events where ``keep`` is true (this batch when all are), with this batch's
        acknowledgement, rejects and offsets; ``last``: the stream ID the result reaches."""
        if keep.all():
            return self
        return EventBatch(
            *(getattr(self, name)[keep] for name in _EVENT_COLUMNS),
            {k: (codes[keep], labels) for k, (codes, labels) in self.keys.items()},
            ack=self.ack,
            ack_replies=self.ack_replies,
            rejects=self.rejects,
            last=last,
            transaction_id=None if self.transaction_id is None else self.transaction_id[keep],
            offsets=self.offsets,
        )

    def key_combos(self, names: tuple[str, ...]) -> tuple[np.ndarray, list[tuple[str, ...]]]:
        """(one combined code per event, the key tuple of each code): mixed radix."""
        combo = np.zeros(len(self.ts), dtype=np.int64)
        decode: list[tuple[str, ...]] = [()]
        for name in names:
            codes, labels = self.keys[name]
            combo = combo * len(labels) + codes
            decode = [d + (label,) for d in decode for label in labels]
        return combo, decode


def concat_batches(batches: list[EventBatch]) -> EventBatch:
    """One batch of several read back to back; key codes renumbered into the union of labels."""
    if len(batches) == 1:
        return batches[0]
    keys = {}
    for name in batches[0].keys:
        labels = sorted({label for b in batches for label in b.keys[name][1]})
        number = {label: i for i, label in enumerate(labels)}
        codes = [
            np.array([number[x] for x in b.keys[name][1]], dtype=np.int64)[b.keys[name][0]]
            for b in batches
        ]
        keys[name] = (np.concatenate(codes), labels)
    lasts = [last for b in batches if (last := b.last_id()) is not None]
    transaction_ids = [b.transaction_id for b in batches]
    return EventBatch(
        *(np.concatenate([getattr(b, f) for b in batches]) for f in _EVENT_COLUMNS),
        keys,
        ack=b"".join(b.ack or b"" for b in batches),
        ack_replies=sum(b.ack_replies for b in batches if b.ack),
        rejects=[r for b in batches for r in b.rejects],
        last=max(lasts, default=None),
        transaction_id=None
        if any(t is None for t in transaction_ids)
        else np.concatenate(transaction_ids),
    )


_EVENT_COLUMNS = ("id_hi", "id_lo", "ts", "customer_id", "amount", "is_fraud")


def batch_from_columns(
    id_hi: np.ndarray, id_lo: np.ndarray, columns: dict[str, Any], **extra: Any
) -> EventBatch:
    """An :class:`EventBatch` from Arrow or numpy columns named as in :data:`FIELDS`."""
    keys = {}
    for name in KEY_FIELDS:
        keys[name] = _encode(columns[name])
    return EventBatch(
        np.asarray(id_hi, dtype=np.int64),
        np.asarray(id_lo, dtype=np.int64),
        _as_ms(columns["ts"]),
        _numbers(columns["customer_id"], np.int64),
        _numbers(columns["amount"], np.float64),
        _numbers(columns["is_fraud"], bool),
        keys,
        transaction_id=_numbers(columns["transaction_id"], np.int64),
        **extra,
    )


def _numbers(column: Any, dtype: Any) -> np.ndarray:
    """A numpy column; Arrow ones are viewed in place (see flows.common.arrow for why)."""
    if isinstance(column, np.ndarray | list | tuple):
        return np.asarray(column, dtype=dtype)
    from flows.common.arrow import view

    values = view(column)
    if values is None:  # nulls or an unusual type: pyarrow's own conversion
        return np.asarray(column, dtype=dtype)
    return np.asarray(values, dtype=dtype)


def _as_ms(column: Any) -> np.ndarray:
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray | pa.Array):
        from flows.common.arrow import view

        values = view(column)
        if values is not None and not pa.types.is_boolean(column.type):
            return values if pa.types.is_timestamp(column.type) else values.astype(np.int64)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.timestamp("ms", tz=column.type.tz)).cast(pa.int64())
        return column.to_numpy()
    return np.asarray(column, dtype=np.int64)


def _encode(column: Any) -> tuple[np.ndarray, list[str]]:
    """(codes, labels) of a string or dictionary column."""
    import pyarrow as pa

    if isinstance(column, tuple):  # already (codes, labels)
        return column
    if isinstance(column, list):  # raw values from a stream: codes by first appearance
        seen: dict[Any, int] = {}
        codes = np.fromiter((seen.setdefault(v, len(seen)) for v in column), np.int64, len(column))
        return codes, [v.decode() if isinstance(v, bytes) else str(v) for v in seen]
    if isinstance(column, np.ndarray):
        labels, codes = np.unique(column, return_inverse=True)
        return codes.astype(np.int64), [
            x.decode() if isinstance(x, bytes) else str(x) for x in labels.tolist()
        ]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_dictionary(column.type):
        import pyarrow.compute as pc

        column = pc.dictionary_encode(column)
    if column.null_count:
        raise BadInput(f"a key column has {column.null_count} null values")
    from flows.common.arrow import labels, view

    codes = view(column.indices)
    dictionary = column.dictionary
    if codes is None or not pa.types.is_string(dictionary.type) or dictionary.null_count:
        return (
            column.indices.to_numpy(zero_copy_only=False).astype(np.int64),
            dictionary.cast(pa.string()).to_pylist(),
        )
    return codes.astype(np.int64), labels(dictionary)


class Source(Protocol):
    """A stream of transaction events: read micro-batches, acknowledge committed ones."""

    name: str

    def start(self, after: tuple[int, int], offsets: Any = None) -> None:
        """Position the source just after the last committed stream ID.

        ``offsets``: the sink's live {partition: next offset} for a partitioned source.
        """

    def read(self, max_events: int, block_ms: int) -> EventBatch | None:
        """Up to ``max_events`` events in stream order; None when there is nothing (yet)."""

    def ack(self, batch: EventBatch) -> None:
        """The batch is committed: the source may forget it."""

    def lag(self) -> dict[str, Any]:
        """How far behind the consumer is."""

    def close(self) -> None:
        """Release connections and files."""
