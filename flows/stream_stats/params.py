"""Parameters of a stream_stats run, validated before any work starts; they define its
:class:`~flows.stream_stats.windows.WindowSpec`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from flows.common.params import (
    DURATION_PATTERN,
    FlowParams,
    existing_dir,
    is_url,
    literal_of,
    problem,
    under_root,
)
from flows.stream_stats.events import KEY_FIELDS
from flows.stream_stats.windows import WindowSpec, parse_duration_ms

KeyField = literal_of(KEY_FIELDS)


class StreamParams(FlowParams):
    """Parameters of one bounded run of the stream_stats flow, validated before any work."""

    source: str = Field(
        min_length=1,
        description="A fraud_synth dataset directory (embedded; relative: under the data root), "
        "redis://host:port/db?stream=KEY&group=NAME, rediss:// (TLS), unix:///path.sock?... "
        "or kafka://host:port[,host:port]/TOPIC?group=NAME.",
    )
    window: str = Field(
        "1min",
        pattern=DURATION_PATTERN,
        description="Window length (tumbling), e.g. 30s, 1min, 1h.",
    )
    slide: str | None = Field(
        None, pattern=DURATION_PATTERN, description="Slide for hopping windows; divides window."
    )
    watermark: str = Field(
        "5min", pattern=DURATION_PATTERN, description="Allowed lateness behind the newest event."
    )
    max_batch: int = Field(
        262_144,
        ge=1_000,
        le=10_000_000,
        description="Events per micro-batch (shrinks on out-of-memory).",
    )
    max_duration: str = Field(
        "4min", pattern=DURATION_PATTERN, description="The run ends by itself after this long."
    )
    max_events: int | None = Field(None, ge=1, description="The run ends after this many.")
    backend: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="auto: GPU if NVML sees one and CuPy imports, else CPU."
    )
    sink: str = Field(
        min_length=1,
        description="DuckDB database file holding the windows and the progress (relative: under "
        "the data root).",
    )
    keys: list[KeyField] | None = Field(  # type: ignore[valid-type]
        None,
        validate_default=True,
        description=f"Group-by fields besides the window (default: all of {list(KEY_FIELDS)}).",
    )

    @field_validator("keys")
    @classmethod
    def _known_keys(cls, keys: list[str] | None) -> list[str]:
        if keys is None:
            return list(KEY_FIELDS)
        unknown = [k for k in keys if k not in KEY_FIELDS]
        if unknown or len(set(keys)) != len(keys):
            raise problem("keys", f"{keys} must be distinct names from {list(KEY_FIELDS)}")
        return keys

    @field_validator("source")
    @classmethod
    def _source(cls, value: str, info: ValidationInfo) -> str:
        if is_url(value):
            return value
        return existing_dir(under_root(value.removeprefix("embedded:"), info), info)

    @field_validator("sink")
    @classmethod
    def _sink(cls, value: str, info: ValidationInfo) -> str:
        if is_url(value) or value.strip() == ":memory:":
            raise problem("sink", "expected the path of a DuckDB file")
        return under_root(value, info)

    @model_validator(mode="after")
    def _durations(self) -> StreamParams:
        window = parse_duration_ms(self.window, name="window")
        slide = parse_duration_ms(self.slide, name="slide") if self.slide else window
        parse_duration_ms(self.watermark, name="watermark")
        if parse_duration_ms(self.max_duration, name="max_duration") <= 0:
            raise problem("max_duration", "must be positive")
        if window <= 0 or slide <= 0 or window % slide:
            raise problem(
                "window", f"{self.window} must be a positive multiple of slide {self.slide}"
            )
        return self

    def spec(self) -> WindowSpec:
        """The window configuration in milliseconds."""
        window = parse_duration_ms(self.window, name="window")
        return WindowSpec(
            window_ms=window,
            slide_ms=parse_duration_ms(self.slide, name="slide") if self.slide else window,
            watermark_ms=parse_duration_ms(self.watermark, name="watermark"),
            keys=tuple(self.keys or KEY_FIELDS),
        )

    def consume_arguments(self) -> dict[str, Any]:
        """What these parameters decide of a ``run_micro_batches`` call: where from, where to,
        which windows."""
        spec = self.spec()
        return {
            "source": self.source,
            "sink": self.sink,
            "window_ms": spec.window_ms,
            "slide_ms": spec.slide_ms,
            "watermark_ms": spec.watermark_ms,
            "keys": list(spec.keys),
        }
