"""The writable-output probe the flows run before reading any input: disk full, read-only and
forbidden outputs are each one terminal OutputUnavailable naming the directory."""

from __future__ import annotations

import errno
import pickle

import pytest

from headroom import OutputUnavailable, is_terminal
from headroom.storage import TMP_MARK, check_writable
from tests.faults.conftest import as_nobody


def test_a_full_disk_fails_the_probe(small_disk):
    disk = small_disk("32k")  # less than the probe's 64 KiB
    with pytest.raises(OutputUnavailable) as caught:
        check_writable(disk / "out")
    assert (caught.value.errno, caught.value.path) == (errno.ENOSPC, str(disk / "out"))
    assert is_terminal(caught.value) and isinstance(caught.value, OSError)
    assert not [p for p in (disk / "out").iterdir() if p.name.startswith(TMP_MARK)]


def test_a_read_only_disk_fails_the_probe(read_only_disk):
    with pytest.raises(OutputUnavailable, match="Read-only file system") as caught:
        check_writable(read_only_disk)
    assert caught.value.errno == errno.EROFS


def test_a_directory_this_user_may_not_write_fails_the_probe(tmp_path):
    owned_by_root = tmp_path / "out"
    owned_by_root.mkdir(mode=0o755)
    error = as_nobody(check_writable, owned_by_root / "dataset")
    assert isinstance(error, OutputUnavailable), error
    assert (error.errno, error.path) == (errno.EACCES, str(owned_by_root / "dataset"))
    assert "Permission denied" in str(error)


def test_a_writable_directory_passes_and_keeps_nothing(tmp_path):
    check_writable(tmp_path / "a" / "b", "s3://bucket/prefix")  # S3 is not probed
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_the_error_survives_pickling_as_itself():
    error = OutputUnavailable("/data/out", "IO Error: disk full", errno.ENOSPC)
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.path, again.errno, str(again)) == (
        OutputUnavailable,
        "/data/out",
        errno.ENOSPC,
        str(error),
    )
