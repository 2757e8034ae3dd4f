"""headroom on Prefect: budgeted tasks, OOM-only retries with smaller chunks, memory admission.

A budgeted task wraps a body function that lives in a module without prefect. Prefect's
task engine takes the slot of the task's tag (the tag concurrency limit); headroom then takes
``occupy=cap_mb`` of the per-host limit ``memory-mb:<hostname>``, picks this attempt's chunk
size, runs the body in a guarded child under the cap, and retries only out-of-memory errors
(and declared transient ones), each time with a smaller chunk.

This package's public names, for flows to import; the parts: ``task`` (budgeted_task and one
attempt), ``attempts`` (a task run's attempts), ``admission`` (memory and CPU slots, budget and
limits), ``mapping`` (map_bounded, failure report), ``hooks`` (flow-run hooks), ``artifacts``,
``report`` (the memory timeline), ``leases``, ``blocks``, ``runs`` and ``reruns`` (lost runs),
``waiting`` (who holds the slot a task waits for), ``local_server``.
"""

from headroom.prefect.admission import (
    MEMORY_LEASE_S,
    cpu_slots,
    current_budget,
    current_limits,
    planned_limits,
)
from headroom.prefect.hooks import FLOW_HOOKS, FLOW_TAG_FLOOR, FLOW_TAG_OOM, RERUN_TAG
from headroom.prefect.mapping import (
    ItemFailures,
    MaxWorkers,
    Outcome,
    map_bounded,
    raise_failures,
    raise_output_fault,
)
from headroom.prefect.task import (
    ChunkScale,
    budgeted_task,
    retry_oom_or_transient,
    retry_unless_terminal,
)
from headroom.server import temporary as _temporary_server

__all__ = [
    "FLOW_HOOKS",
    "FLOW_TAG_FLOOR",
    "FLOW_TAG_OOM",
    "MEMORY_LEASE_S",
    "RERUN_TAG",
    "ChunkScale",
    "ItemFailures",
    "MaxWorkers",
    "Outcome",
    "budgeted_task",
    "cpu_slots",
    "current_budget",
    "current_limits",
    "map_bounded",
    "planned_limits",
    "raise_failures",
    "raise_output_fault",
    "retry_oom_or_transient",
    "retry_unless_terminal",
]

# On the embedded default, the temporary server starts now, with headroom's app (before any
# client of this process starts Prefect's own).
_temporary_server.start_early()
