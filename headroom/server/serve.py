"""Serve an ASGI app factory on a listening socket this process inherited.

    python -m headroom.server.serve FD MODULE:FACTORY

headroom.server.temporary binds and listens on 127.0.0.1 before it starts this process, so
clients can connect (the kernel queues them) while the server imports and migrates; uvicorn
answers them once the app's startup is done.
"""

from __future__ import annotations

import socket
import sys


def main(argv: list[str]) -> None:
    import uvicorn

    fd, factory = int(argv[0]), argv[1]
    listening = socket.socket(fileno=fd)  # family and type read from the descriptor
    config = uvicorn.Config(factory, factory=True, log_level="error", lifespan="on")
    uvicorn.Server(config).run(sockets=[listening])


if __name__ == "__main__":
    main(sys.argv[1:])
