"""Download one published file into the raw cache, atomically; transient faults are marked
retryable and name the host."""

from __future__ import annotations

import contextlib
import http.client
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from headroom.errors import BadInput, output_fault
from headroom.storage import publishing

_BLOCK_BYTES = 1 << 20


class TransientDownloadError(ConnectionError):
    """A download that may succeed when tried again (connection, 5xx, short body)."""


def unreachable(url: str, exc: BaseException) -> TransientDownloadError:
    """A host that does not answer (refused, unknown, timed out): named with the parameter
    every URL comes from."""
    parsed = urlparse(url)
    host = f"{parsed.hostname}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"
    reason = getattr(exc, "reason", None) or exc
    return TransientDownloadError(f"parameter source: cannot reach {host} ({reason}): {url}")


@contextlib.contextmanager
def open_url(url: str, timeout_s: float, method: str = "GET") -> Iterator[Any]:
    import urllib.error
    import urllib.request

    if urlparse(url).scheme not in ("http", "https"):
        raise BadInput(f"not an http(s) URL: {url!r}")
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "headroom"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code in (400, 401, 403, 404, 410):
            raise BadInput(f"{url}: HTTP {exc.code} {exc.reason}") from None
        raise TransientDownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise unreachable(url, exc) from None
    with response:
        yield response


def download_file(url: str, destination: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Stream ``url`` to ``destination`` (temporary name, then rename); skip a complete copy.

    A copy is complete when its size equals the server's Content-Length.
    """
    final = Path(destination)
    final.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open_url(url, timeout_s) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if expected is not None and final.is_file() and final.stat().st_size == expected:
            return {"path": str(final), "bytes": expected, "skipped": True, "seconds": 0.0}
        written = 0
        try:
            with publishing(final) as temporary, temporary.open("wb") as out:
                while block := response.read(_BLOCK_BYTES):
                    out.write(block)
                    written += len(block)
                if expected is not None and written != expected:
                    raise TransientDownloadError(
                        f"{url}: got {written:,} of {expected:,} bytes (connection cut short)"
                    )
        except (OSError, TimeoutError, http.client.HTTPException) as exc:
            if isinstance(exc, TransientDownloadError):
                raise
            fault = output_fault(exc, str(final.parent))
            if fault is not None:  # the cache's disk, not the connection: no retry mends it
                raise fault from None
            raise TransientDownloadError(f"{url}: {exc}") from None
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    return {
        "path": str(final),
        "bytes": written,
        "skipped": False,
        "seconds": round(time.monotonic() - started, 3),
    }
