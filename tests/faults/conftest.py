"""Machine faults made real: a small tmpfs that fills up (ENOSPC), a read-only mount (EROFS),
and a process that is not root (EACCES; root ignores file modes).

Mounting needs root (or CAP_SYS_ADMIN). Where it is refused the test skips with the reason,
except under CI (CI=true), which runs as root on machines where it works.
"""

from __future__ import annotations

import os
import pickle
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

NOBODY = 65534


def _mount(target: Path, options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})"
        if IN_CI:
            pytest.fail(f"{reason}; CI runs as root and must run this test")
        pytest.skip(reason)


def _unmount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``small_disk("4m")``: a fresh tmpfs of that size (a disk that fills up), unmounted after."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        target = tmp_path / f"disk-{len(mounted)}"
        _mount(target, f"size={size},mode=0755")
        mounted.append(target)
        return target

    yield make
    for target in reversed(mounted):
        _unmount(target)


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (writes fail with EROFS), unmounted after."""
    target = tmp_path / "read-only"
    _mount(target, "ro,size=1m,mode=0755")
    try:
        yield target
    finally:
        _unmount(target)


def as_nobody(function: Callable[..., Any], *args: Any) -> BaseException | None:
    """Run ``function(*args)`` in a forked child whose user is nobody; the exception it raised
    (None when it returned). Root passes every permission check, so EACCES needs this."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to switch a child process to the nobody user")
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on, only os._exit
        os.close(reader)
        result: BaseException | None = None
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            function(*args)
        except BaseException as exc:  # noqa: BLE001 - carried back to the test
            result = exc
        with os.fdopen(writer, "wb") as out:
            pickle.dump(result, out)
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)
