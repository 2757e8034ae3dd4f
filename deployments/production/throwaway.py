"""A Prefect server on a throw-away PostgreSQL database, for tests and benchmarks.

The production start path (``server.start_server`` with its own role and database) on a free
port, without the UI; the database and its role are dropped afterwards.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from deployments.ports import free_port
from deployments.production.pg import PgSettings, drop_database
from deployments.production.server import ServerSettings, start_server, stop


@contextlib.contextmanager
def throwaway_server(
    home: Path, extra_env: dict[str, str] | None = None, timeout_s: float = 180
) -> Iterator[str]:
    """A Prefect server on a new PostgreSQL database (local, trust auth); yields its API URL.

    For tests and benchmarks: the SQLite server answers "database is locked" (503) under
    concurrent task runs, costing seconds of client back-off per task.
    """
    name = f"headroom_test_{uuid.uuid4().hex[:10]}"
    pg = PgSettings(database=name, user=name)
    settings = ServerSettings(
        port=free_port(),
        state_dir=home,
        ui=False,
        extra_env={"PREFECT_LOGGING_LEVEL": "WARNING", **(extra_env or {})},
    )
    try:
        start_server(settings, pg, timeout_s=timeout_s)
        yield settings.api_url
    finally:
        stop(settings)
        drop_database(pg)
