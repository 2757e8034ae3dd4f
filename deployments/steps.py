"""The pull step of every headroom deployment (prefect.yaml): run from the worker host's
checkout, named by ``HEADROOM_ROOT``.

A worker's flow-run process starts in a temporary directory; the workloads' entrypoints and
``deployments/limits.toml`` are found relative to the checkout, so each run first changes to it.
The variable is read when the run starts, on the worker's host, so one deployment serves workers
whose checkouts live at different paths. Unset or wrong, the run stops here with what to set,
not with a FileNotFoundError in a temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path

VARIABLE = "HEADROOM_ROOT"


def project_directory() -> dict[str, str]:
    """Change to ``$HEADROOM_ROOT``; raise naming the variable when it is unset or wrong."""
    value = os.environ.get(VARIABLE, "").strip()
    if not value:
        raise RuntimeError(
            f"{VARIABLE} is not set in this worker's environment: set it to the directory of "
            "the headroom checkout on this host (the one holding prefect.yaml), e.g. "
            f"`{VARIABLE}=/srv/headroom prefect worker start --pool headroom-process`"
        )
    root = Path(value).expanduser()
    if not (root / "prefect.yaml").is_file():
        raise RuntimeError(
            f"{VARIABLE}={value!r} is not a headroom checkout (no prefect.yaml there): set it to "
            "the directory of the headroom checkout on this worker's host"
        )
    os.chdir(root)
    return {"directory": str(root)}
