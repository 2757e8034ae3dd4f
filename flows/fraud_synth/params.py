"""Parameters of the fraud dataset flow: validated before any work, errors name the parameter.

No prefect here: the model is shared by the flow, the benchmark and tests.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from flows.common.params import SIZE_PATTERN, FlowParams, problem, under_root
from flows.fraud_synth.spec import DatasetSpec, plan_dataset, transactions_for_size
from headroom.storage import is_location
from headroom.units import parse_size

Compression = Literal["zstd", "snappy", "lz4", "gzip", "none"]
MIN_FILE_BYTES = 1_000_000
"""The smallest ``file_size``: below it a dataset is mostly files (and per-file overhead)."""
MAX_FILES = 100_000
"""The most transaction files one dataset may plan."""


class FraudSynthParams(FlowParams):
    """What to generate and where; ``transactions`` wins over ``size`` when both are given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: str | None = Field(
        default="200MB",
        pattern=SIZE_PATTERN,
        description="Target transaction Parquet on disk, e.g. '1GB', '30GB' (MB = 10^6 bytes, "
        "MiB = 2^20); ignored when transactions is given.",
    )
    transactions: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000_000,
        description="Exact transaction count (wins over size).",
    )
    start: date = Field(default=date(2024, 1, 1), description="First day of the data.")
    end: date = Field(default=date(2024, 3, 31), description="Last day (inclusive).")
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="Same seed, same dataset.")
    file_size: str = Field(
        default="128MB", pattern=SIZE_PATTERN, description="Target size of one transaction file."
    )
    out: str = Field(
        default="data/fraud",
        min_length=1,
        description="Output: a path (relative: under the data root), s3://bucket/prefix or the "
        "name of an output-storage block.",
    )
    compression: Compression = Field(default="zstd", description="Parquet compression codec.")
    fraud_rate: float = Field(default=0.008, ge=0, le=1, description="Share of fraud rows.")
    customers: int | None = Field(
        default=None, ge=1, le=5_000_000, description="Customers (default: from the volume)."
    )
    extra_bytes_per_row: int = Field(
        default=0, ge=0, le=1 << 20, description="Drill: extra memory per buffered row."
    )

    @field_validator("size", "file_size")
    @classmethod
    def _positive_size(cls, value: str | None, info: ValidationInfo) -> str | None:
        name = info.field_name or "size"
        if value is not None and parse_size(value, name=name) <= 0:
            raise problem(name, f"must be more than 0 bytes, got {value!r}")
        return value

    @field_validator("file_size")
    @classmethod
    def _file_size_floor(cls, value: str) -> str:
        if 0 < parse_size(value, name="file_size") < MIN_FILE_BYTES:
            raise problem("file_size", f"must be at least 1MB, got {value!r}")
        return value

    @field_validator("out")
    @classmethod
    def _out_under_root(cls, value: str, info: ValidationInfo) -> str:
        # A bare name is an output-storage block's, resolved by the writer.
        return under_root(value, info) if is_location(value) else value

    @model_validator(mode="after")
    def _consistent(self) -> FraudSynthParams:
        if self.end < self.start:
            raise problem("end", f"{self.end} is before start {self.start}")
        if self.size is None and self.transactions is None:
            raise problem("size", "give size or transactions")
        files = self.planned_files()
        if files > MAX_FILES:
            raise problem(
                "file_size",
                f"{self.file_size!r} plans {files:,} files (at most {MAX_FILES:,}); "
                "give a larger file_size",
            )
        return self

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
