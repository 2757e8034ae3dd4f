"""Parameters of the fraud-model flow, validated before any work starts, and the time split."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from flows.common.params import FlowParams, bad_parameter, existing_dir, problem, under_root
from flows.ml_pipeline.schema import iso, local_path, to_ms


class TrainParams(FlowParams):
    """Parameters of train_fraud_model, validated before any work starts."""

    dataset: str = Field(
        min_length=1,
        description="fraud_synth dataset: directory (relative: under the data root) or s3:// URL",
    )
    out: str = Field(
        "data/models",
        min_length=1,
        description="model registry: directory (relative: under the data root) or s3:// URL",
    )
    train_end: datetime | None = Field(None, description="train on transactions before this")
    test_start: datetime | None = Field(None, description="evaluate on transactions from this")
    train_fraction: float = Field(
        0.7, gt=0.05, lt=0.95, description="split at this fraction of the time range (no dates)"
    )
    # Lower than the usual 0.1: a faster rate over-fits the rare scenarios (card testing ranks
    # below genuine rows).
    learning_rate: float = Field(0.05, gt=0, le=1, description="boosting learning rate")
    max_iter: int = Field(150, ge=1, le=5000, description="boosting iterations")
    max_leaf_nodes: int = Field(31, ge=2, le=4096, description="leaves per tree")
    min_samples_leaf: int = Field(5, ge=1, le=100_000, description="rows a leaf needs at least")
    l2_regularization: float = Field(0.0, ge=0, description="L2 penalty on leaf values")
    alert_rate: float = Field(0.01, gt=0, lt=0.5, description="share of transactions alerted")
    min_fraud_rows: int = Field(50, ge=1, description="health check: fraud rows the data needs")
    seed: int = Field(0, ge=0, description="sampling and model seed")
    workdir: str | None = Field(
        None,
        description="local scratch for features and model files (relative: under the data root)",
    )
    chunk_scale: float = Field(
        1.0, gt=0, le=1, description="Scale every first chunk size by this (0 < x <= 1)."
    )

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str, info: ValidationInfo) -> str:
        return existing_dir(under_root(value, info), info)

    @field_validator("out", "workdir")
    @classmethod
    def _paths(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else under_root(value, info)

    @model_validator(mode="after")
    def _split_in_order(self) -> TrainParams:
        if self.train_end and self.test_start and self.test_start < self.train_end:
            raise problem(
                "test_start", f"{self.test_start} must not be before train_end {self.train_end}"
            )
        for name in ("train_end", "test_start"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                setattr(self, name, value.replace(tzinfo=UTC))
        return self

    def model_params(self) -> dict[str, Any]:
        """The HistGradientBoosting parameters."""
        return {
            "learning_rate": self.learning_rate,
            "max_iter": self.max_iter,
            "max_leaf_nodes": self.max_leaf_nodes,
            "min_samples_leaf": self.min_samples_leaf,
            "l2_regularization": self.l2_regularization,
        }

    def local_workdir(self) -> Path:
        """Where intermediate files go: ``workdir``, else ``<out>/_work`` or the state dir."""
        if self.workdir:
            return Path(self.workdir).resolve()
        registry = local_path(self.out)
        if registry is not None:
            return registry / "_work"
        from headroom.state import state_dir

        return Path(state_dir()) / "ml-work"


def resolve_split(params: TrainParams, min_ts_ms: int, max_ts_ms: int) -> tuple[int, int]:
    """(train_end, test_start) in ms: the given dates, else ``train_fraction`` of the range."""
    if params.train_end is None and params.test_start is None:
        cut = min_ts_ms + int((max_ts_ms - min_ts_ms) * params.train_fraction)
        return cut, cut
    train_end = to_ms(params.train_end or params.test_start)
    test_start = to_ms(params.test_start or params.train_end)
    for name, value in (("train_end", train_end), ("test_start", test_start)):
        if not min_ts_ms < value <= max_ts_ms:
            raise bad_parameter(
                name,
                f"{iso(value)} is outside the dataset's time range "
                f"{iso(min_ts_ms)} .. {iso(max_ts_ms)}",
            )
    return train_end, test_start
