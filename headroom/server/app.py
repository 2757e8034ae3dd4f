"""The app of the temporary Prefect server headroom starts on the embedded default: Prefect's
own, with requests the SQLite database refused answered again at once.

On SQLite, a write transaction that began by reading fails at once ("database is locked",
SQLITE_BUSY_SNAPSHOT) when another connection wrote in between: slot acquisitions (read the
limit, then increment it) meet this whenever a task's events, another task's release or a
lease renewal land in the same few milliseconds. Prefect's server answers 503 and rolls back;
its client waits about 2 s and asks again. Here the server runs a refused slot request again
itself, after a few milliseconds, and the client never sees the 503 unless the database stays
locked for ``RETRY_FOR_S``. Prefect's client resends any 503 whole, so running a refused
request again is what already happens, only sooner. Only the concurrency-limit endpoints are
run again here: each is one transaction, so a refused one changed nothing; an endpoint that
commits in several transactions (logs are written in batches) keeps Prefect's behaviour.

    uvicorn --factory headroom.server.app:create_app
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

RETRY_FOR_S = 1.0
RETRIED_PATHS = ("/api/v2/concurrency_limits/",)
FIRST_WAIT_S = 0.005
LONGEST_WAIT_S = 0.05

Scope = dict[str, Any]
Message = dict[str, Any]


class RetryRefused:
    """ASGI middleware: an HTTP request to one of ``paths`` answered 503 runs again (body
    replayed) until it is answered otherwise or ``retry_for_s`` has passed; then the 503 goes
    to the client. Other requests pass through untouched."""

    def __init__(
        self, app: Any, retry_for_s: float = RETRY_FOR_S, paths: tuple[str, ...] = RETRIED_PATHS
    ) -> None:
        self.app = app
        self.retry_for_s = retry_for_s
        self.paths = paths
        self.retried = 0  # requests run again, for tests and benchmarks

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.paths):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        give_up_at = time.monotonic() + self.retry_for_s
        wait = FIRST_WAIT_S
        while True:
            last_try = time.monotonic() + wait > give_up_at
            if await self._answered(scope, body, receive, send, last_try):
                return
            self.retried += 1
            await asyncio.sleep(wait)
            wait = min(wait * 2, LONGEST_WAIT_S)

    async def _answered(
        self, scope: Scope, body: bytes, receive: Any, send: Any, last_try: bool
    ) -> bool:
        """Run the request once; False when it was refused (503) and may run again."""
        delivered = False
        refused = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the body is read: wait for the client to go

        async def answer(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == 503:
                refused = not last_try
            if not refused:
                await send(message)

        try:
            await self.app(dict(scope), replay, answer)  # routing rewrites the scope it is given
        except Exception:
            if not refused:  # the error handler re-raises after its 503: that one we retry
                raise
        return not refused


def create_app() -> Any:
    """Prefect's server app (settings from the environment, as Prefect's factory) behind
    :class:`RetryRefused`."""
    from prefect.server.api.server import create_app as prefect_app

    return RetryRefused(prefect_app())
