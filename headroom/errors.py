"""Errors of the memory-budget layer: one base, retryable OutOfMemory, terminal errors."""

from __future__ import annotations


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


def is_terminal(exc: BaseException) -> bool:
    """True for errors that retrying cannot fix."""
    return isinstance(exc, TerminalError)
