"""headroom: the memory-budget layer. Knows nothing about any workload; never imports prefect.

Public API: :class:`Budget`, :func:`run_guarded`, :class:`Chunking`, :class:`History`,
:class:`OutOfMemory` and the terminal errors, :func:`parse_size`.
"""

from headroom.budget import Budget, GpuDevice
from headroom.errors import (
    BadInput,
    ChildFailed,
    ChunkFloorReached,
    GuardTimeout,
    HeadroomError,
    OutOfMemory,
    OutputUnavailable,
    TerminalError,
    is_terminal,
    output_fault,
)
from headroom.isolation.guard import (
    GuardResult,
    current_cap_mb,
    duckdb_share,
    guarded_call,
    run_guarded,
    run_guarded_measured,
)
from headroom.sizing.chunks import Chunking, first_size, next_size, shrink
from headroom.sizing.history import History
from headroom.state import state_dir
from headroom.units import duckdb_limit, format_mib, parse_size

__all__ = [
    "BadInput",
    "Budget",
    "ChildFailed",
    "ChunkFloorReached",
    "Chunking",
    "GpuDevice",
    "GuardResult",
    "GuardTimeout",
    "HeadroomError",
    "History",
    "OutOfMemory",
    "OutputUnavailable",
    "TerminalError",
    "current_cap_mb",
    "duckdb_limit",
    "duckdb_share",
    "first_size",
    "format_mib",
    "guarded_call",
    "is_terminal",
    "next_size",
    "output_fault",
    "parse_size",
    "run_guarded",
    "run_guarded_measured",
    "shrink",
    "state_dir",
]
