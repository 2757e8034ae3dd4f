"""A body module whose import starts a thread (as numpy's BLAS pool does): never forked from."""

from __future__ import annotations

import os
import threading

_stop = threading.Event()
threading.Thread(target=_stop.wait, daemon=True).start()


def parents() -> tuple[int, int]:
    return os.getpid(), os.getppid()
