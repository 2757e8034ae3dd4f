"""The one declaration of limits: per tag its slots and per-task cap, and the host reserve."""

from __future__ import annotations

import logging
import os
import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from headroom.budget import Budget
from headroom.units import MIB, parse_size

log = logging.getLogger(__name__)

ENV_LIMITS = "HEADROOM_LIMITS"
PYPROJECT_TABLE = "tool.headroom"
GENERIC_SETUP_HINT = "create headroom's limits on this host first (headroom.prefect.planned_limits)"
# The orchestrator (flow process, ephemeral server) never gets less than this share back.
MAX_RESERVE_FRACTION = 0.3
# The declaration the application names when it is imported (use_declaration), for processes
# that do not start in the project's directory: a user's script, a Dask worker.
_declared: Path | None = None


def use_declaration(path: str | os.PathLike[str]) -> None:
    """Name the application's limits declaration (below $HEADROOM_LIMITS, above the
    pyproject.toml found from the current directory)."""
    global _declared
    _declared = Path(path)


@dataclass(frozen=True)
class TagLimit:
    """A tag's slots (Prefect tag concurrency limit) and the cap of one of its tasks."""

    tag: str
    slots: int
    cap_mb: float | None = None

    def cap_within(self, budget: Budget) -> float:
        """This tag's per-task cap: declared, else the budget divided by its slots."""
        return self.cap_mb if self.cap_mb is not None else budget.per_task(self.slots)


@dataclass(frozen=True)
class Limits:
    """Every declared tag limit plus the reserve kept for the orchestrator's own processes."""

    tags: dict[str, TagLimit] = field(default_factory=dict)
    reserve_mb: float = 300.0
    source: str = ""

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Limits:
        """Read the TOML declaration: ``path``, else $HEADROOM_LIMITS, else the one the
        application named (:func:`use_declaration`), else :func:`declaration_file`."""
        where = Path(path or os.environ.get(ENV_LIMITS) or _declared or declaration_file())
        data = tomllib.loads(where.read_text())
        tags = {}
        for tag, spec in data.get("tags", {}).items():
            slots = int(spec["slots"])
            if slots < 1:
                raise ValueError(f"{where}: tag {tag!r} needs at least 1 slot")
            cap = spec.get("cap")
            cap_mb = parse_size(cap, name=f"{where}: tags.{tag}.cap") / MIB if cap else None
            tags[tag] = TagLimit(tag, slots, cap_mb)
        return cls(tags, float(data.get("reserve_mb", 300)), str(where))

    def with_caps(self, caps: dict[str, str], origin: str) -> Limits:
        """These limits with some tags' caps replaced (sizes as given, e.g. '300MiB'); a tag
        not declared here is skipped with a warning: one mistyped name must not stop every
        task of every other tag."""
        tags = dict(self.tags)
        for tag, size in caps.items():
            if tag not in tags:
                log.warning(
                    "%s: tag_caps names %r, which %s does not declare", origin, tag, self.source
                )
                continue
            cap_mb = parse_size(size, name=f"{origin}: tag_caps[{tag!r}]") / MIB
            tags[tag] = replace(tags[tag], cap_mb=cap_mb)
        return replace(self, tags=tags, source=f"{self.source} + {origin}" if caps else self.source)

    def tag(self, tag: str) -> TagLimit:
        try:
            return self.tags[tag]
        except KeyError:
            raise KeyError(
                f"tag {tag!r} is not declared in {self.source}; declare its slots and cap there"
            ) from None

    def reserve_for(self, budget: Budget) -> float:
        """MiB kept back for the orchestrator: the declared reserve, at most 30 % of a budget."""
        return min(self.reserve_mb, budget.mb * MAX_RESERVE_FRACTION)

    def host_limit_mb(self, budget: Budget) -> int:
        """Size of the per-host memory limit: the budget minus the orchestrator's reserve."""
        return max(1, int(budget.mb - self.reserve_for(budget)))

    def cap_mb(self, tag: str, budget: Budget) -> float:
        """The cap of one task with this tag, never more than the per-host memory limit."""
        return min(self.tag(tag).cap_within(budget), float(self.host_limit_mb(budget)))


def declaration_file() -> Path:
    """The application's limits declaration: the ``limits`` key of ``[tool.headroom]`` in the
    nearest pyproject.toml at or above the current directory (relative to that file)."""
    found = _pyproject_setting("limits")
    if found is None:
        raise FileNotFoundError(
            f"no limits declaration: pass a path, set ${ENV_LIMITS}, or give `limits` under "
            f"[{PYPROJECT_TABLE}] in the project's pyproject.toml"
        )
    pyproject, value = found
    return pyproject.parent / value


def setup_hint() -> str:
    """What to do when a limit headroom needs is missing on the server: the application's
    words (``setup`` under ``[tool.headroom]``) when it gives any."""
    found = _pyproject_setting("setup")
    return found[1] if found else GENERIC_SETUP_HINT


def _pyproject_setting(key: str) -> tuple[Path, str] | None:
    """(pyproject.toml, value) of ``key`` under [tool.headroom] in the nearest pyproject.toml
    at or above the current directory that has that table; None when none has the key."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if not pyproject.is_file():
            continue
        try:
            table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("headroom")
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if isinstance(table, dict):
            value = table.get(key)
            return (pyproject, str(value)) if value else None
    return None


def memory_limit_name(host: str | None = None) -> str:
    """The per-host global concurrency limit, ``memory-mb:<hostname>``."""
    return f"memory-mb:{host or socket.gethostname()}"
