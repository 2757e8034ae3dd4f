"""Arrow <-> numpy without pyarrow's pandas shim, for fraud_synth's writer and stream_stats'
hot path.

``pa.array``, ``pa.table`` and ``Array.to_numpy`` import pandas on first use: about 0.5
CPU-s and 50 MiB per process, a quarter of a 2 M-event run. Arrays built from (or read as)
their buffers do not. Only null-free primitive, string and dictionary arrays are handled
here; callers fall back to pyarrow's own conversions for anything else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_NUMPY_TO_ARROW = {
    np.dtype(np.int64): "int64",
    np.dtype(np.int32): "int32",
    np.dtype(np.float32): "float32",
    np.dtype(np.float64): "float64",
}


def view(array: Any) -> np.ndarray | None:
    """A numpy view of a null-free int/float/bool/ms-timestamp Arrow array; None otherwise."""
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks != 1:
            array = array.combine_chunks()
        else:
            array = array.chunk(0)
    if array.null_count:
        return None
    kind = array.type
    if len(array) == 0:  # an empty array may have no data buffer at all
        return None
    if pa.types.is_boolean(kind):
        bits = np.frombuffer(array.buffers()[1], dtype=np.uint8)
        unpacked = np.unpackbits(bits, count=array.offset + len(array), bitorder="little")
        return unpacked[array.offset :].view(bool)
    if pa.types.is_timestamp(kind) and kind.unit == "ms":
        dtype = np.dtype(np.int64)
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        dtype = np.dtype(kind.to_pandas_dtype())
    else:
        return None
    return np.frombuffer(
        array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize
    )


def labels(array: Any) -> list[str]:
    """The values of a null-free string array as Python strings."""
    offsets = np.frombuffer(
        array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4
    )
    data = array.buffers()[2]
    raw = b"" if data is None else data.to_pybytes()
    return [
        raw[a:b].decode() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    ]


def column(values: np.ndarray, arrow_type: Any = None) -> Any:
    """A null-free Arrow array over an int64/int32/float32/float64/bool numpy array, or over
    any numpy array whose bytes already are the fixed-width ``arrow_type`` (a timestamp)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    if values.dtype == bool:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    if arrow_type is None:
        name = _NUMPY_TO_ARROW.get(values.dtype)
        if name is None:
            raise TypeError(f"no Arrow column for numpy {values.dtype}")
        arrow_type = getattr(pa, name)()
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def strings(values: list[str]) -> Any:
    """An Arrow string array of ``values``."""
    import pyarrow as pa

    return _variable(pa.string(), [v.encode() for v in values])


def binaries(values: list[bytes]) -> Any:
    """An Arrow binary array of ``values`` (serialised sketches)."""
    import pyarrow as pa

    return _variable(pa.binary(), values)


def _variable(kind: Any, encoded: list[bytes]) -> Any:
    import pyarrow as pa

    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(
        kind, len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    )


def dictionary(codes: np.ndarray, values: list[str]) -> Any:
    """A dictionary-encoded string column: ``values[codes[i]]`` for every row."""
    import pyarrow as pa

    return pa.DictionaryArray.from_arrays(
        column(np.asarray(codes, dtype=np.int32)), strings(values or [""])
    )


def table(columns: dict[str, Any]) -> Any:
    """An Arrow table from numpy arrays, Python lists of numbers or bools, or Arrow arrays."""
    import pyarrow as pa

    arrays = []
    for values in columns.values():
        if isinstance(values, pa.Array | pa.ChunkedArray):
            arrays.append(values)
        else:
            arrays.append(column(np.asarray(values)))
    return pa.Table.from_arrays(arrays, names=list(columns))
