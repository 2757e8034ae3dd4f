"""The output-storage block: a local path or an S3-compatible bucket, accepted by name as `out`."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from headroom.storage import S3Settings, Storage, is_location, open_storage


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
        return OutputStorage.load(out).open()
    except ValueError as exc:
        raise BadInput(
            f"out: {out!r} is neither a path, an s3:// URL nor a saved output-storage block"
        ) from exc
