"""Where outputs go (a local directory or an S3-compatible bucket) and atomic publication.

A file is written under a temporary name and published only when complete: ``os.replace``
locally; on S3, a copy to the final key followed by deletion of the temporary key. A writer
that dies mid-file therefore never leaves a readable half under a final name. On this
machine's disk, :func:`publishing` does the same for a file or a whole directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from headroom.errors import BadInput, output_faults

if TYPE_CHECKING:
    import pyarrow.fs

TMP_MARK = ".tmp-"
PROBE_BYTES = 64 * 1024
"""What :func:`check_writable` writes: enough that a full disk refuses it (a zero-byte file
needs only an inode)."""


def temporary_sibling(final: str | os.PathLike[str], role: str = "") -> Path:
    """A hidden sibling of ``final``: ``.tmp-<pid>-<random>-[<role>-]<name>``. The writer's pid
    in the name tells a killed writer's leftovers from the files of one still running."""
    final = Path(final)
    label = f"{role}-" if role else ""
    return final.with_name(f"{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}-{label}{final.name}")


@contextmanager
def publishing(
    final: str | os.PathLike[str], *, directory: bool = False, replace: bool = True
) -> Iterator[Path]:
    """Write ``final`` on this machine's disk atomically: yields a temporary sibling (a new
    empty directory with ``directory``) that takes ``final``'s name when the block succeeds
    and is removed when it fails, so ``final`` is the old whole or the new whole.

    A directory replaces an existing one in two renames (the old steps aside, then is deleted),
    between which ``final`` is briefly absent. With ``replace=False`` an existing ``final`` is
    kept and the new one dropped (the first writer of a content-addressed entry wins)."""
    target = Path(final)
    temporary = temporary_sibling(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        temporary.mkdir()
    try:
        yield temporary
        _take_name(temporary, target, replace)
    except BaseException:
        _remove_local(temporary)
        raise


def _take_name(temporary: Path, final: Path, replace: bool) -> None:
    if not replace:
        try:
            if temporary.is_dir():
                os.rename(temporary, final)  # refused when final exists and is not empty
            else:
                os.link(temporary, final)  # refused when final exists
        except OSError:
            if not final.exists():
                raise
        _remove_local(temporary)
        return
    if temporary.is_dir() and final.exists():
        old = temporary_sibling(final, "old")
        os.rename(final, old)
        os.rename(temporary, final)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(temporary, final)


def _remove_local(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class S3Settings:
    """An S3-compatible endpoint; credentials come from a block or the environment."""

    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"


@dataclass(frozen=True)
class Storage:
    """A root on a pyarrow filesystem: local directory or ``bucket/prefix`` on S3."""

    filesystem: pyarrow.fs.FileSystem = field(repr=False)
    root: str
    url: str

    @property
    def is_local(self) -> bool:
        return self.filesystem.type_name == "local"

    def path(self, *parts: str) -> str:
        """The full filesystem path of a relative path under the root; a path that would
        leave the root (absolute, or climbing out with ``..``) is refused."""
        if parts:
            relative = posixpath.normpath(posixpath.join(*parts))
            if relative.startswith("/") or relative == ".." or relative.startswith("../"):
                raise BadInput(f"{posixpath.join(*parts)!r} is not a path inside {self.url}")
        return posixpath.join(self.root, *parts)

    def exists(self, relative: str) -> bool:
        import pyarrow.fs as pafs

        info = self.filesystem.get_file_info(self.path(relative))
        return info.type != pafs.FileType.NotFound

    def size(self, relative: str) -> int | None:
        import pyarrow.fs as pafs

        info = self.filesystem.get_file_info(self.path(relative))
        return None if info.type == pafs.FileType.NotFound else info.size

    def makedirs(self, relative: str = "") -> None:
        self.filesystem.create_dir(self.path(relative) if relative else self.root, recursive=True)

    @contextmanager
    def atomic_output(self, relative: str) -> Iterator[str]:
        """Yield a temporary path to write; publish it as ``relative`` only on success."""
        final = self.path(relative)
        directory = posixpath.dirname(final)
        temporary = posixpath.join(directory, temporary_sibling(final).name)
        if self.is_local:
            os.makedirs(directory, exist_ok=True)
        try:
            yield temporary
            self.publish(temporary, final)
        except BaseException:
            self._delete_quietly(temporary)
            raise

    def publish(self, temporary: str, final: str) -> None:
        """Make a complete temporary file visible under its final name."""
        if self.is_local:
            os.replace(temporary, final)
        else:
            self.filesystem.copy_file(temporary, final)
            self.filesystem.delete_file(temporary)

    def put_file(self, local: str | os.PathLike[str], relative: str) -> None:
        """Copy a finished local file to ``relative``, published atomically."""
        with self.atomic_output(relative) as temporary:
            with self.filesystem.open_output_stream(temporary) as sink, open(local, "rb") as source:
                shutil.copyfileobj(source, sink, 8 << 20)

    def get_file(self, relative: str, local: str | os.PathLike[str]) -> None:
        """Copy ``relative`` to a local path, which appears only once complete."""
        with publishing(local) as temporary:
            with self.filesystem.open_input_stream(self.path(relative)) as source:
                with open(temporary, "wb") as sink:
                    shutil.copyfileobj(source, sink, 8 << 20)

    def write_json(self, relative: str, document: Any) -> None:
        """Write a small JSON document atomically."""
        with self.atomic_output(relative) as temporary:
            with self.filesystem.open_output_stream(temporary) as stream:
                stream.write(json.dumps(document, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, relative: str) -> Any | None:
        """A JSON document, or None when it does not exist."""
        if not self.exists(relative):
            return None
        with self.filesystem.open_input_stream(self.path(relative)) as stream:
            return json.loads(stream.read().decode())

    def remove_temporaries(self, relative: str = "", *, of: str | None = None) -> list[str]:
        """Delete temporary files that killed writers left behind, under ``relative`` (or only
        those of the one file ``of``, before it is written again); returns their paths."""
        import pyarrow.fs as pafs

        suffix = ""
        if of is not None:
            directory, name = posixpath.split(self.path(of))
            selector = pafs.FileSelector(directory, allow_not_found=True)
            suffix = f"-{name}"
        else:
            where = self.path(relative) if relative else self.root
            selector = pafs.FileSelector(where, recursive=True, allow_not_found=True)
        removed = []
        for info in self.filesystem.get_file_info(selector):
            name = info.base_name
            if (
                info.type == pafs.FileType.File
                and name.startswith(TMP_MARK)
                and name.endswith(suffix)
            ):
                self._delete_quietly(info.path)
                removed.append(info.path)
        return removed

    def _delete_quietly(self, path: str) -> None:
        try:
            self.filesystem.delete_file(path)
        except (OSError, FileNotFoundError):
            pass


def check_writable(*directories: str | os.PathLike[str]) -> None:
    """Raise OutputUnavailable naming the first local directory that cannot take a file: it is
    created if missing, then a probe file is written, flushed to disk and removed. Run before
    any input is read, so a full or read-only disk is reported once, not once per input. A
    location that is not a local path (``s3://``) is not probed."""
    for directory in directories:
        text = os.fspath(directory)
        parsed = urlparse(text)
        if parsed.scheme not in ("", "file"):
            continue
        path = os.path.abspath(parsed.path if parsed.scheme == "file" else text)
        probe = os.path.join(path, f"{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}-probe")
        with output_faults(path):
            os.makedirs(path, exist_ok=True)
            try:
                with open(probe, "wb") as handle:
                    handle.write(bytes(PROBE_BYTES))
                    handle.flush()
                    os.fsync(handle.fileno())
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(probe)


def is_location(out: str) -> bool:
    """True when ``out`` is a path or URL rather than the name of a storage block."""
    return any(c in out for c in "/\\:") or out.startswith(".") or os.path.isdir(out)


def open_storage(out: str | os.PathLike[str], s3: S3Settings | None = None) -> Storage:
    """A local path, ``file://`` URL or ``s3://bucket/prefix`` as a :class:`Storage`."""
    import pyarrow.fs as pafs

    text = os.fspath(out)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        root = os.path.abspath(parsed.path if parsed.scheme == "file" else text)
        os.makedirs(root, exist_ok=True)
        return Storage(pafs.LocalFileSystem(), root, text)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise BadInput(f"out: {text!r} names no bucket")
        settings = s3 or s3_settings_from_env()
        options: dict[str, Any] = {"region": settings.region}
        if settings.endpoint_url:
            endpoint = urlparse(settings.endpoint_url)
            options["endpoint_override"] = endpoint.netloc or settings.endpoint_url
            options["scheme"] = endpoint.scheme or "https"
        if settings.access_key:
            options["access_key"] = settings.access_key
            options["secret_key"] = settings.secret_key
        filesystem = pafs.S3FileSystem(**options)
        root = posixpath.join(parsed.netloc, parsed.path.lstrip("/")).rstrip("/")
        return Storage(filesystem, root, text)
    raise BadInput(f"out: unsupported scheme {parsed.scheme!r} in {text!r} (use a path or s3://)")


def s3_settings_from_env() -> S3Settings:
    """S3 settings from the usual environment variables (AWS_* and AWS_ENDPOINT_URL)."""
    return S3Settings(
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL"),
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
