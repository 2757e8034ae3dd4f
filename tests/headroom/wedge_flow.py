"""A script's flow that holds the only slot of its tag and memory slots, for the tests of what a
killed or failed run leaves on the embedded default (tests/headroom/test_local_server.py).

    python -m tests.headroom.wedge_flow WORKDIR SECONDS [fail|pair]

``pair`` submits two holders of the one slot at once: the second waits in Prefect's engine for
the slot while the first holds it (tests/headroom/test_wait_log.py).
"""

import os
import sys
import time

from prefect import flow

from headroom.prefect import FLOW_HOOKS, budgeted_task
from tests.production import bodies

hold = budgeted_task(bodies.hold, tag="test-one", name="hold-test-one")


@flow(name="headroom-test-wedge", **FLOW_HOOKS)
def wedge(workdir: str, seconds: float, fail: bool = False, pair: bool = False) -> int:
    """Record this process's PID, hold the slot for ``seconds``, then fail if asked to."""
    with open(os.path.join(workdir, "flow.pid"), "w") as handle:
        handle.write(str(os.getpid()))
    if pair:
        first = hold.submit(marker=os.path.join(workdir, "holding"), seconds=seconds)
        while not os.path.exists(os.path.join(workdir, "holding")):
            time.sleep(0.1)  # the first holds the slot: the second must wait for it
        second = hold.submit(marker=os.path.join(workdir, "holding-2"), seconds=0.1)
        return first.result() + second.result()
    held_by = hold(marker=os.path.join(workdir, "holding"), seconds=seconds)
    if fail:
        raise RuntimeError("failed on purpose, after its task")
    return held_by


if __name__ == "__main__":
    extra = sys.argv[3:]
    wedge(sys.argv[1], float(sys.argv[2]), fail="fail" in extra, pair="pair" in extra)
