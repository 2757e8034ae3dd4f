"""The embedded source: a fraud_synth dataset replayed as a stream, and dataset helpers.

Pure logic without prefect. A dataset lists its files in ``manifest.json`` (see
flows.fraud_synth.generate), each in time order; the stream ID of an event is (file index,
row in file). The helpers build small datasets for tests and benchmarks and read one back
event by event.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from flows.stream_stats.events import FIELDS, KEY_FIELDS, EventBatch, batch_from_columns
from headroom.errors import BadInput


def load_manifest(dataset: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The complete transaction files of a dataset, in index (= event-time) order."""
    path = Path(dataset) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"parameter source: {dataset} has no manifest.json") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON ({exc})") from None
    files = manifest.get("files")
    if not isinstance(files, list) or any("path" not in f or "index" not in f for f in files):
        raise BadInput(f"{path}: 'files' must list objects with 'index' and 'path'")
    return sorted(files, key=lambda f: int(f["index"]))


class EmbeddedSource:
    """A fraud_synth dataset replayed in manifest order; IDs are (file index, row)."""

    COLUMNS = list(FIELDS)

    def __init__(self, dataset: str | os.PathLike[str]) -> None:
        self.dataset = Path(dataset)
        self.name = f"embedded:{self.dataset.resolve()}"
        self.files = load_manifest(self.dataset)
        self._position = 0  # index into self.files
        self._row = 0  # next row in that file
        self._reader: Any = None
        self._reader_file = -1
        self._pending: Any = None  # rows read from the file but not yet handed out

    def start(self, after: tuple[int, int], offsets: Any = None) -> None:
        hi, lo = after
        self._position = next(
            (i for i, f in enumerate(self.files) if int(f["index"]) >= hi), len(self.files)
        )
        if self._position < len(self.files) and int(self.files[self._position]["index"]) == hi:
            self._row = lo + 1
        else:
            self._row = 0

    def _open(self) -> Any:
        import pyarrow.parquet as pq

        entry = self.files[self._position]
        path = self.dataset / entry["path"]
        try:
            parquet = pq.ParquetFile(path)
        except (FileNotFoundError, OSError) as exc:
            raise BadInput(f"{path}: listed in the manifest but unreadable ({exc})") from None
        missing = [c for c in self.COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise BadInput(f"{path}: missing columns {missing}")
        return parquet

    def read(self, max_events: int, block_ms: int = 0) -> EventBatch | None:
        import pyarrow as pa

        pieces, ids_hi, ids_lo, taken = [], [], [], 0
        while taken < max_events and self._position < len(self.files):
            if self._reader_file != self._position:
                self._reader = self._open().iter_batches(batch_size=65_536, columns=self.COLUMNS)
                self._reader_file, self._pending, self._next_row = self._position, None, 0
            if self._pending is None:
                record = next(self._reader, None)
                if record is None:
                    self._position += 1
                    self._row = 0
                    continue
                self._pending, self._pending_first = record, self._next_row
                self._next_row += record.num_rows
            # Rows at or below the committed position are skipped.
            skip = max(0, self._row - self._pending_first)
            if skip >= self._pending.num_rows:
                self._pending = None
                continue
            piece = self._pending.slice(skip, max_events - taken)
            first = self._pending_first + skip
            index = int(self.files[self._position]["index"])
            pieces.append(piece)
            ids_hi.append(np.full(piece.num_rows, index, dtype=np.int64))
            ids_lo.append(np.arange(first, first + piece.num_rows, dtype=np.int64))
            taken += piece.num_rows
            self._row = first + piece.num_rows
            if self._row >= self._pending_first + self._pending.num_rows:
                self._pending = None
        if not pieces:
            return None
        table = pa.Table.from_batches(pieces).unify_dictionaries().combine_chunks()
        columns = {name: table.column(name) for name in FIELDS}
        return batch_from_columns(np.concatenate(ids_hi), np.concatenate(ids_lo), columns)

    def ack(self, batch: EventBatch) -> None:
        pass

    def lag(self) -> dict[str, Any]:
        left = sum(int(f.get("rows", 0)) for f in self.files[self._position :]) - self._row
        return {"remaining_events": max(0, left)}

    def close(self) -> None:
        self._reader = None


MERCHANT_CATEGORIES = (
    "grocery_pos",
    "gas_transport",
    "shopping_net",
    "shopping_pos",
    "food_dining",
    "health_fitness",
    "travel",
    "entertainment",
    "home",
    "kids_pets",
    "personal_care",
    "misc_pos",
    "misc_net",
    "grocery_net",
)
CHANNELS = ("pos", "online", "contactless", "atm")


def synthetic_events(
    transactions: int,
    seed: int = 0,
    start_ms: int = 1_704_067_200_000,
    span_ms: int = 86_400_000,
    customers: int = 5_000,
    disorder_ms: int = 0,
) -> dict[str, np.ndarray]:
    """Transactions in the fraud_synth columns (for tests and benchmarks without the generator).

    ``disorder_ms`` jitters event times after sorting, so the stream arrives out of order.
    """
    rng = np.random.default_rng(seed)
    ts = start_ms + np.sort(rng.integers(0, span_ms, transactions))
    if disorder_ms:
        ts = ts + rng.integers(-disorder_ms, disorder_ms + 1, transactions)
    return {
        "transaction_id": np.arange(transactions, dtype=np.int64) + 1,
        "ts": ts,
        "customer_id": rng.integers(1, customers + 1, transactions),
        "merchant_category": np.array(MERCHANT_CATEGORIES)[
            rng.integers(0, len(MERCHANT_CATEGORIES), transactions)
        ],
        "channel": np.array(CHANNELS)[rng.integers(0, len(CHANNELS), transactions)],
        "amount": np.round(rng.gamma(2.0, 35.0, transactions) + 0.5, 2),
        "is_fraud": rng.random(transactions) < 0.008,
    }


def fraud_dataset(
    out_dir: str | os.PathLike[str], transactions: int, seed: int = 0, files: int = 2, days: int = 1
) -> Path:
    """A fraud_synth dataset: the real generator when present, else :func:`synthetic_events`."""
    from datetime import date, timedelta

    out = Path(out_dir)
    try:
        from flows.fraud_synth.generate import generate_dataset_local
    except ImportError:
        generate_dataset_local = None
    if generate_dataset_local is not None:
        start = date(2024, 1, 1)  # whole days; the end day is included
        generate_dataset_local(
            out,
            transactions=transactions,
            seed=seed,
            start=start,
            end=start + timedelta(days=max(1, days) - 1),
            files=files,
        )
    else:
        write_events_dataset(
            out, synthetic_events(transactions, seed, span_ms=max(1, days) * 86_400_000), files
        )
    return out


def read_events(dataset: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every event of a dataset as a dict, in stream order (for checks and the baseline)."""
    source = EmbeddedSource(dataset)
    source.start((-1, -1))
    events: list[dict[str, Any]] = []
    while (batch := source.read(1 << 20)) is not None:
        labels = {k: batch.keys[k][1] for k in KEY_FIELDS}
        codes = {k: batch.keys[k][0].tolist() for k in KEY_FIELDS}
        for i, (ts, customer, amount, fraud) in enumerate(
            zip(
                batch.ts.tolist(),
                batch.customer_id.tolist(),
                batch.amount.tolist(),
                batch.is_fraud.tolist(),
                strict=True,
            )
        ):
            events.append(
                {
                    "ts": ts,
                    "customer_id": customer,
                    "amount": amount,
                    "is_fraud": fraud,
                    **{k: labels[k][codes[k][i]] for k in labels},
                }
            )
    return events


def write_events_dataset(
    out_dir: str | os.PathLike[str], events: dict[str, Any], files: int = 1
) -> dict[str, Any]:
    """Write events (columns by name, in stream order) as a fraud_synth-layout dataset.

    For replays of captured events and for tests that need a chosen order (late or
    out-of-order events); the rows keep the given order, split into ``files`` parts.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    (out / "transactions").mkdir(parents=True, exist_ok=True)
    n = len(events["ts"])
    strings = pa.dictionary(pa.int32(), pa.string())
    columns = {
        "transaction_id": pa.array(events.get("transaction_id", np.arange(n)), pa.int64()),
        "ts": pa.array(np.asarray(events["ts"], dtype=np.int64), pa.int64()).cast(
            pa.timestamp("ms", tz="UTC")
        ),
        "customer_id": pa.array(events["customer_id"], pa.int64()),
        "device_id": pa.array(events.get("device_id", np.zeros(n, np.int64)), pa.int64()),
        "merchant_id": pa.array(events.get("merchant_id", np.zeros(n, np.int64)), pa.int64()),
        "merchant_category": pa.array(events["merchant_category"], pa.string()).cast(strings),
        "channel": pa.array(events["channel"], pa.string()).cast(strings),
        "amount": pa.array(events["amount"], pa.float64()),
        "latitude": pa.array(events.get("latitude", np.zeros(n)), pa.float32()),
        "longitude": pa.array(events.get("longitude", np.zeros(n)), pa.float32()),
        "is_fraud": pa.array(events["is_fraud"], pa.bool_()),
        "fraud_scenario": pa.array(events.get("fraud_scenario", ["none"] * n), pa.string()).cast(
            strings
        ),
    }
    table = pa.table(columns)
    entries = []
    bounds = np.linspace(0, n, files + 1).astype(int)
    for index in range(files):
        part = table.slice(bounds[index], bounds[index + 1] - bounds[index])
        relative = f"transactions/part-{index:05d}.parquet"
        pq.write_table(part, out / relative)
        ts = np.asarray(events["ts"][bounds[index] : bounds[index + 1]], dtype=np.int64)
        entries.append(
            {
                "index": index,
                "path": relative,
                "rows": part.num_rows,
                "bytes": (out / relative).stat().st_size,
                "min_ts": int(ts.min()) if len(ts) else None,
                "max_ts": int(ts.max()) if len(ts) else None,
                "fraud": {},
                "checksum": "",
            }
        )
    manifest = {"seed": None, "start": None, "end": None, "files": entries, "schema_version": 1}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
