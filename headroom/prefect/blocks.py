"""headroom's Prefect blocks, editable in the UI: the memory budget (a budget override,
fraction and per-tag caps; $HEADROOM_MEMORY_LIMIT wins over it, it wins over detection) and
the output storage (a local path or an S3-compatible bucket, accepted by name as ``out``).
"""

from __future__ import annotations

import time

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from headroom.storage import S3Settings, Storage, is_location, open_storage
from headroom.units import parse_size

BLOCK_NAME = "default"
_CACHE_S = 60.0
_cache: dict[str, tuple[float, MemoryBudget | None]] = {}


class MemoryBudget(Block):
    """How much memory headroom's tasks may use on a host."""

    _block_type_name = "headroom memory budget"
    _block_type_slug = "headroom-memory-budget"
    _description = "Memory budget for headroom tasks (the HEADROOM_MEMORY_LIMIT env var wins)."

    limit: str | None = Field(
        default=None, description="Budget as given, e.g. '6GiB' or '1500MB'; empty: detect."
    )
    fraction: float = Field(
        default=0.8, gt=0, le=1, description="Share of host/cgroup memory when detecting."
    )
    tag_caps: dict[str, str] = Field(
        default_factory=dict,
        description="Per-tag cap overrides of deployments/limits.toml, e.g. {'mitma-od': "
        "'300MiB'}; slots stay as declared there.",
    )

    @field_validator("tag_caps")
    @classmethod
    def _valid_caps(cls, value: dict[str, str]) -> dict[str, str]:
        for tag, size in value.items():
            parse_size(size, name=f"tag_caps[{tag!r}]")
        return value

    @field_validator("limit")
    @classmethod
    def _valid_limit(cls, value: str | None) -> str | None:
        if value:
            parse_size(value, name="limit")
        return value or None


def load_budget_block(name: str = BLOCK_NAME) -> MemoryBudget | None:
    """The saved block, cached for a minute; None when none is saved."""
    cached = _cache.get(name)
    if cached and time.monotonic() - cached[0] < _CACHE_S:
        return cached[1]
    try:
        block: MemoryBudget | None = MemoryBudget.load(name)  # type: ignore[assignment]
    except ValueError:
        block = None
    _cache[name] = (time.monotonic(), block)
    return block


def forget_cached_block() -> None:
    """Drop the cached block so the next load reads the server (after an edit)."""
    _cache.clear()


class OutputStorage(Block):
    """Where a flow writes its outputs."""

    _block_type_name = "headroom output storage"
    _block_type_slug = "headroom-output-storage"
    _description = "A local directory or an S3-compatible bucket/prefix for flow outputs."

    path: str | None = Field(default=None, description="Local directory (when not using S3).")
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint URL.")
    bucket: str | None = Field(default=None, description="Bucket name (S3).")
    prefix: str = Field(default="", description="Key prefix inside the bucket.")
    access_key_id: SecretStr | None = Field(default=None)
    secret_access_key: SecretStr | None = Field(default=None)
    region: str = Field(default="us-east-1")

    def url(self) -> str:
        if self.bucket:
            return f"s3://{self.bucket}/{self.prefix.strip('/')}".rstrip("/")
        if not self.path:
            raise ValueError("output storage block needs either path or bucket")
        return self.path

    def s3_settings(self) -> S3Settings:
        return S3Settings(
            endpoint_url=self.endpoint_url,
            access_key=self.access_key_id.get_secret_value() if self.access_key_id else None,
            secret_key=(
                self.secret_access_key.get_secret_value() if self.secret_access_key else None
            ),
            region=self.region,
        )

    def open(self) -> Storage:
        return open_storage(self.url(), self.s3_settings() if self.bucket else None)


def resolve_out(out: str) -> Storage:
    """`out` as a Storage: a local path, an s3:// URL, or the name of an OutputStorage block."""
    from headroom.errors import BadInput

    if is_location(out):
        return open_storage(out)
    try:
        block: OutputStorage = OutputStorage.load(out)  # type: ignore[assignment]
        return block.open()
    except ValueError as exc:
        raise BadInput(
            f"out: {out!r} is neither a path, an s3:// URL nor a saved output-storage block"
        ) from exc


BLOCK_TYPES = (MemoryBudget, OutputStorage)


def register_blocks() -> list[str]:
    """Register every block type with the current Prefect API; returns their slugs."""
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
    return [b.get_block_type_slug() for b in BLOCK_TYPES]
