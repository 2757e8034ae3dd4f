"""Where headroom keeps its state on this host: learned chunk sizes, attempt records and the
process of each flow run."""

from __future__ import annotations

import os
from pathlib import Path

ENV_STATE_DIR = "HEADROOM_STATE_DIR"


def state_dir() -> Path:
    """Where headroom keeps its state: $HEADROOM_STATE_DIR, else ./.headroom."""
    return Path(os.environ.get(ENV_STATE_DIR) or Path.cwd() / ".headroom")


def runs_dir() -> Path:
    """Per flow run files: its attempts (headroom.prefect.report), its process
    (headroom.prefect.runs)."""
    return state_dir() / "runs"
