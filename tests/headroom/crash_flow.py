"""A flow for the crash test: writes its process id, then waits to be killed."""

import os
import time

from prefect import flow

from headroom.prefect import FLOW_HOOKS, ChunkScale


@flow(name="crash-target", **FLOW_HOOKS)
def crash_target(pidfile: str, seconds: float = 60.0, chunk_scale: ChunkScale = 1.0) -> float:
    """Record our pid and chunk_scale, then sleep."""
    with open(f"{pidfile}.{chunk_scale:g}", "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(seconds)
    return chunk_scale
