"""Bodies of the production tests' budgeted tasks (no prefect: guarded children start fast)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def hold(marker: str, seconds: float) -> int:
    """Say we hold our slots (marker file with our PID), then keep them for ``seconds``."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def square(value: int, cap_mb: float) -> dict:
    """``value`` squared, with the cap this task ran under and the process that ran it."""
    return {"value": value, "square": value * value, "cap_mb": cap_mb, "pid": os.getpid()}
