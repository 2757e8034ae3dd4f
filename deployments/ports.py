"""A free TCP port on 127.0.0.1, for the throwaway servers and brokers tests and benchmarks start.

Its own module so that a broker or a test server can take a port without importing the
production server's modules (which import Prefect and start headroom's temporary server).
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
