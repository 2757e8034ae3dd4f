"""Kill a process (and its descendants) once another process is gone.

    python -m headroom.isolation.watchdog OWNER_PID TARGET_PID

Started by headroom.prefect.local_server for the temporary Prefect server of a script: when the
script's process ends in any way (SIGKILL included, when nothing of it can stop the server),
the server goes too. It exits when either process is gone. Process identity is psutil's (pid
and start time), so a recycled pid is never signalled.
"""

from __future__ import annotations

import sys
import time

POLL_S = 0.5
GRACE_S = 2.0  # the owner is gone: nothing waits for a clean shutdown


def watch(owner_pid: int, target_pid: int) -> bool:
    """Wait until the owner is gone, then stop the target's tree; True if it had to."""
    import psutil

    try:
        owner = psutil.Process(owner_pid)
        target = psutil.Process(target_pid)
    except psutil.NoSuchProcess:
        return False
    while _alive(owner):
        if not target.is_running():
            return False
        time.sleep(POLL_S)
    if not target.is_running():
        return False
    tree = [target, *target.children(recursive=True)]
    for process in tree:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=GRACE_S)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=GRACE_S)
    return True


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
