"""Errors of the memory-budget layer: one base, retryable OutOfMemory, terminal errors."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator


class HeadroomError(Exception):
    """Base of every error headroom raises itself."""


class OutOfMemory(HeadroomError, MemoryError):
    """A guarded body ran out of its memory cap; retrying with a smaller chunk may help.

    kind is one of ``watchdog`` (headroom killed it past the cap), ``oom-killer`` (it died of
    SIGKILL that headroom did not send), ``allocator`` (MemoryError, DuckDB or Arrow
    out-of-memory inside the child) or ``gpu`` (CUDA out of memory).
    """

    KINDS = ("watchdog", "oom-killer", "allocator", "gpu")

    def __init__(
        self,
        kind: str,
        cap_mb: float | None = None,
        peak_mb: float | None = None,
        chunk: int | None = None,
        detail: str = "",
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown OutOfMemory kind {kind!r}")
        self.kind = kind
        self.cap_mb = cap_mb
        self.peak_mb = peak_mb
        self.chunk = chunk
        self.detail = detail
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [f"out of memory ({self.kind})"]
        if self.cap_mb is not None:
            parts.append(f"cap {self.cap_mb:.0f} MiB")
        if self.peak_mb is not None:
            parts.append(f"peak {self.peak_mb:.0f} MiB")
        if self.chunk is not None:
            parts.append(f"chunk {self.chunk:,}")
        text = ", ".join(parts)
        return f"{text}: {self.detail}" if self.detail else text

    def __reduce__(self):  # keep attributes across pickling (Dask, result storage)
        return (type(self), (self.kind, self.cap_mb, self.peak_mb, self.chunk, self.detail))

    def with_chunk(self, chunk: int | None) -> OutOfMemory:
        """The same error, naming the chunk size the attempt used."""
        return OutOfMemory(self.kind, self.cap_mb, self.peak_mb, chunk, self.detail)


class TerminalError(HeadroomError):
    """An error that a retry cannot fix: bad input, bad parameters, a chunk floor reached."""


class BadInput(TerminalError, ValueError):
    """Input data or parameters that can never succeed; names the file, line or parameter."""


class OutputUnavailable(TerminalError, OSError):
    """The output cannot be written: its disk is full, it is read-only, or this process may not
    write there. A fault of the machine, not of any input: reported once, naming the output,
    and never retried (the same write fails the same way until someone frees or fixes it)."""

    def __init__(self, path: str, detail: str = "", code: int | None = None) -> None:
        self.path = str(path)
        self.detail = detail
        self.code = code
        reason = os.strerror(code) if code is not None else "not writable"
        message = f"output {self.path} is unavailable: {reason}"
        self.message = f"{message} ({detail})" if detail else message
        super().__init__(self.message)
        # Set after OSError's own init, which reads a one-argument call as no errno.
        self.errno = code
        self.strerror = reason
        self.filename = self.path

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # keep attributes across pickling (guarded children, Dask)
        return (type(self), (self.path, self.detail, self.code))


OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
"""Errors of a write that say the output is unusable, whatever the data written."""


def output_fault(exc: BaseException, path: str) -> OutputUnavailable | None:
    """``exc`` as an :class:`OutputUnavailable` naming ``path`` when it is a fault of the
    output (by errno, or by the system's text for it in an error of a library such as DuckDB
    that carries no errno); None for any other error. Call it only around writes: a
    permission error while reading an input is that input's problem."""
    if isinstance(exc, OutputUnavailable):
        return exc
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS:
        return OutputUnavailable(path, detail, exc.errno)
    text = str(exc)
    for code in OUTPUT_ERRNOS:
        if os.strerror(code) in text:
            return OutputUnavailable(path, detail, code)
    return None


@contextlib.contextmanager
def output_faults(path: str) -> Iterator[None]:
    """Around writes to ``path``: an OSError that is a fault of the output is raised as
    :class:`OutputUnavailable` naming ``path`` (see :func:`output_fault`), any other as itself."""
    try:
        yield
    except OSError as exc:
        fault = output_fault(exc, path)
        if fault is None:
            raise
        raise fault from None


class ChunkFloorReached(TerminalError, MemoryError):
    """The chunk size shrank to its floor and the work still does not fit its cap."""


class ChildFailed(HeadroomError, ChildProcessError):
    """A guarded child died without an exception headroom could carry back.

    Carries the child's exception type name, message and traceback text when its exception
    could not be pickled, or its exit status when it crashed (e.g. SIGSEGV).
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self):
        return (type(self), (self.type_name, self.message, self.traceback_text))


class GuardTimeout(HeadroomError, TimeoutError):
    """A guarded child ran past its timeout and was killed."""


_GPU_OOM_TYPES = {
    "cupy.cuda.memory.OutOfMemoryError",
    "cupy_backends.cuda.api.runtime.CUDARuntimeError",
    "torch.cuda.OutOfMemoryError",
    "torch.OutOfMemoryError",
    "rmm._lib.memory_resource.OutOfMemoryError",
}
_GPU_OOM_TEXT = ("out of memory", "cudaErrorMemoryAllocation", "CUDA_ERROR_OUT_OF_MEMORY")
_ALLOCATOR_OOM_TYPES = {
    "duckdb.OutOfMemoryException",
    "_duckdb.OutOfMemoryException",
    "pyarrow.lib.ArrowMemoryError",
}


def classify_oom(exc: BaseException) -> str | None:
    """The :class:`OutOfMemory` kind that ``exc`` stands for, or None when it is no
    out-of-memory error: an OutOfMemory's own kind; ``gpu`` for CUDA out-of-memory errors
    (CuPy, PyTorch, RMM); ``allocator`` for MemoryError and DuckDB's or Arrow's out-of-memory
    errors. Decided by type names and text, so no GPU or database library is imported.

    The one place a raised error is read as an OOM: in a guarded child, in a body run in the
    task's process, and in a body that must tell an OOM (the guard's business) from a bad file.
    The guard itself adds the kinds seen from outside: ``watchdog`` and ``oom-killer``."""
    if isinstance(exc, OutOfMemory):
        return exc.kind
    for cls in type(exc).__mro__:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if name in _GPU_OOM_TYPES:
            if "OutOfMemory" in name or any(t in str(exc) for t in _GPU_OOM_TEXT):
                return "gpu"
        if name in _ALLOCATOR_OOM_TYPES:
            return "allocator"
    text = str(exc)
    if "CUDA" in text and any(t in text for t in _GPU_OOM_TEXT):
        return "gpu"
    if isinstance(exc, MemoryError) and not isinstance(exc, HeadroomError):
        return "allocator"
    return None


def is_terminal(exc: BaseException) -> bool:
    """True for errors that retrying cannot fix."""
    return isinstance(exc, TerminalError)
