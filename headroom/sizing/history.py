"""Learned chunk profiles: peak bytes per row of successful attempts, kept in SQLite."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from headroom.sizing.chunks import size_class
from headroom.state import state_dir

# Only recent successes speak for a task: inputs and code change.
RECENT = 20


class History:
    """Per (task, input size class): measured peak bytes per row of successful attempts."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else state_dir() / "history.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                """CREATE TABLE IF NOT EXISTS chunk_profile (
                    task TEXT NOT NULL,
                    size_class INTEGER NOT NULL,
                    rows INTEGER NOT NULL,
                    peak_bytes INTEGER NOT NULL,
                    cap_bytes INTEGER NOT NULL,
                    base_bytes INTEGER NOT NULL,
                    recorded_at REAL NOT NULL)"""
            )
            db.execute(
                "CREATE INDEX IF NOT EXISTS chunk_profile_key ON chunk_profile(task, size_class)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def record(
        self,
        task: str,
        input_bytes: int | None,
        rows: int,
        peak_mb: float,
        cap_mb: float,
        base_mb: float = 0.0,
    ) -> None:
        """Remember a successful attempt of ``rows`` rows that peaked at ``peak_mb``.

        ``base_mb`` is what the child held before the work began (interpreter, libraries).
        """
        if rows <= 0 or peak_mb <= 0:
            return
        with self._connect() as db:
            db.execute(
                "INSERT INTO chunk_profile VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    task,
                    size_class(input_bytes),
                    rows,
                    int(peak_mb * (1 << 20)),
                    int(cap_mb * (1 << 20)),
                    int(base_mb * (1 << 20)),
                    time.time(),
                ),
            )

    def profile(self, task: str, input_bytes: int | None) -> tuple[float, float] | None:
        """(bytes per row above the base, base MiB), the worst among recent successes."""
        with self._connect() as db:
            rows = db.execute(
                """SELECT MAX(peak_bytes - base_bytes, 1) * 1.0 / rows, base_bytes
                   FROM chunk_profile WHERE task = ? AND size_class = ?
                   ORDER BY recorded_at DESC LIMIT ?""",
                (task, size_class(input_bytes), RECENT),
            ).fetchall()
        if not rows:
            return None
        return max(r[0] for r in rows), max(r[1] for r in rows) / (1 << 20)

    def forget(self, task: str | None = None) -> None:
        """Drop what was learned for one task, or for all."""
        with self._connect() as db:
            if task is None:
                db.execute("DELETE FROM chunk_profile")
            else:
                db.execute("DELETE FROM chunk_profile WHERE task = ?", (task,))
