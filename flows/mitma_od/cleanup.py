"""After a load: temporaries of dead writers removed, staging and raw files dropped as asked."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from headroom.storage import TMP_MARK


def _owner_alive(name: str) -> bool:
    """Whether the process named in a temporary's name (``.tmp-<pid>-...``) still runs."""
    match = re.match(r"^(?:\.tmp-|duckdb-)(\d+)-", name)
    if not match:
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(*roots: str | os.PathLike[str]) -> list[str]:
    """Delete temporary files and spill directories that killed runs left behind."""
    removed = []
    for root in roots:
        base = Path(root)
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            name = path.name
            if not (name.startswith(TMP_MARK) or name.startswith("duckdb-")):
                continue
            if _owner_alive(name):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path))
    return removed


def cleanup_after_load(
    staging_paths: Iterable[str],
    raw_paths: Iterable[str],
    raw_root: str,
    retention_days: int,
    now: float | None = None,
) -> dict[str, int]:
    """Drop loaded days' staging files; raw files at once (retention 0) or once expired."""
    now = time.time() if now is None else now
    staged = 0
    for path in staging_paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            staged += 1
    raw = 0
    root = Path(raw_root).resolve()
    if retention_days == 0:
        for path in raw_paths:
            # Only files of our own cache: a local mirror given as source is never ours.
            if root in Path(path).resolve().parents:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    raw += 1
    elif root.is_dir():
        horizon = now - retention_days * 86400
        for path in root.rglob("*.csv.gz"):
            if path.stat().st_mtime < horizon:
                path.unlink(missing_ok=True)
                raw += 1
    return {"staging_removed": staged, "raw_removed": raw}
