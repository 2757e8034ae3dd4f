"""Parameters of the fraud dataset flow: validated before any work, errors name the parameter.

No prefect here: the model is shared by the flow, the benchmark and tests.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.fraud_synth_spec import DatasetSpec, plan_dataset, transactions_for_size
from headroom.errors import BadInput
from headroom.units import parse_size

Compression = Literal["zstd", "snappy", "lz4", "gzip", "none"]
MIN_FILE_BYTES = 1_000_000
"""The smallest ``file_size``: below it a dataset is mostly files (and per-file overhead)."""
MAX_FILES = 100_000
"""The most transaction files one dataset may plan."""


class FraudSynthParams(BaseModel):
    """What to generate and where; ``transactions`` wins over ``size`` when both are given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: str | None = Field(
        default="200MB", description="Target transaction Parquet on disk, e.g. '1GB', '30GB'."
    )
    transactions: int | None = Field(
        default=None, ge=1, le=100_000_000_000, description="Exact transaction count."
    )
    start: date = Field(default=date(2024, 1, 1), description="First day of the data.")
    end: date = Field(default=date(2024, 3, 31), description="Last day (inclusive).")
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="Same seed, same dataset.")
    file_size: str = Field(default="128MB", description="Target size of one transaction file.")
    out: str = Field(
        default="data/fraud", min_length=1, description="Path, s3://bucket/prefix or block name."
    )
    compression: Compression = "zstd"
    fraud_rate: float = Field(default=0.008, ge=0, le=1, description="Share of fraud rows.")
    customers: int | None = Field(
        default=None, ge=1, le=5_000_000, description="Customers (default: from the volume)."
    )
    extra_bytes_per_row: int = Field(
        default=0, ge=0, le=1 << 20, description="Drill: extra memory per buffered row."
    )

    @field_validator("size", "file_size")
    @classmethod
    def _positive_size(cls, value: str | None, info) -> str | None:  # type: ignore[no-untyped-def]
        if value is not None and parse_size(value, name=info.field_name) <= 0:
            raise ValueError(f"{info.field_name} must be more than 0 bytes, got {value!r}")
        return value

    @field_validator("file_size")
    @classmethod
    def _file_size_floor(cls, value: str) -> str:
        if 0 < parse_size(value, name="file_size") < MIN_FILE_BYTES:
            raise ValueError(f"file_size must be at least 1MB, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FraudSynthParams:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        if self.size is None and self.transactions is None:
            raise ValueError("give size or transactions")
        files = self.planned_files()
        if files > MAX_FILES:
            raise ValueError(
                f"file_size: {self.file_size!r} plans {files:,} files (at most {MAX_FILES:,}); "
                "give a larger file_size"
            )
        return self

    @classmethod
    def parse(cls, **values: object) -> FraudSynthParams:
        """Validate, turning pydantic's error into a BadInput that names each parameter."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in e['loc']) or 'parameters'}: {e['msg']}"
                for e in exc.errors()
            ]
            raise BadInput("bad parameters: " + "; ".join(problems)) from None

    @property
    def size_bytes(self) -> int | None:
        return None if self.size is None else parse_size(self.size, name="size")

    def _transactions(self) -> tuple[int, int]:
        """(transactions in all, transactions a file)."""
        transactions = self.transactions or transactions_for_size(
            self.size_bytes or 0, self.compression
        )
        per_file = transactions_for_size(
            parse_size(self.file_size, name="file_size"), self.compression
        )
        return transactions, per_file

    def planned_files(self) -> int:
        """How many transaction files these parameters plan."""
        transactions, per_file = self._transactions()
        return -(-transactions // per_file)

    def dataset_spec(self) -> DatasetSpec:
        """The content-deciding spec these parameters describe."""
        transactions, per_file = self._transactions()
        return plan_dataset(
            transactions=transactions,
            seed=self.seed,
            start=self.start,
            end=self.end,
            transactions_per_file=per_file,
            customers=self.customers,
            fraud_rate=self.fraud_rate,
            compression=self.compression,
        )
