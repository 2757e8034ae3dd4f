"""A script's flow that holds the only slot of its tag and memory slots, for the tests of what a
killed or failed run leaves on the embedded default (tests/headroom/test_local_server.py).

    python -m tests.headroom.wedge_flow WORKDIR SECONDS [fail]
"""

import os
import sys

from prefect import flow

from headroom.prefect import FLOW_HOOKS, budgeted_task
from tests.production import bodies

hold = budgeted_task(bodies.hold, tag="test-one", name="hold-test-one")


@flow(name="headroom-test-wedge", **FLOW_HOOKS)
def wedge(workdir: str, seconds: float, fail: bool = False) -> int:
    """Record this process's PID, hold the slot for ``seconds``, then fail if asked to."""
    with open(os.path.join(workdir, "flow.pid"), "w") as handle:
        handle.write(str(os.getpid()))
    held_by = hold(marker=os.path.join(workdir, "holding"), seconds=seconds)
    if fail:
        raise RuntimeError("failed on purpose, after its task")
    return held_by


if __name__ == "__main__":
    wedge(sys.argv[1], float(sys.argv[2]), fail=len(sys.argv) > 3)
