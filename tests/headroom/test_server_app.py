"""The temporary server's app: a request SQLite refused (503) is answered again at once, its
body replayed, under a mounted sub-app as Prefect's API is; and on the embedded default the
temporary server a process starts runs that app (Prefect's own with HEADROOM_PREFECT_APP=0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from headroom.server.app import RetryRefused

ROOT = Path(__file__).resolve().parents[2]


class Busy(Exception):
    """Stands for SQLite's "database is locked"."""


def _app(refusals: int) -> tuple[Starlette, list[bytes]]:
    """An app mounted at /api (as Prefect's is) whose endpoint is refused ``refusals`` times the
    way Prefect's is: the error handler answers 503, then the error goes on up."""
    seen: list[bytes] = []

    async def increment(request: Request) -> JSONResponse:
        seen.append(await request.body())
        if len(seen) <= refusals:
            raise Busy("database is locked")
        return JSONResponse({"acquired": json.loads(seen[-1])["slots"]})

    async def busy(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"exception_message": "Service Unavailable"}, status_code=503)

    api = Starlette(
        routes=[
            Route("/v2/concurrency_limits/increment", increment, methods=["POST"]),
            Route("/logs/", increment, methods=["POST"]),
        ]
    )
    api.add_exception_handler(Exception, busy)
    return Starlette(routes=[Mount("/api", app=api)]), seen


async def _post(app, body: dict, path: str = "/api/v2/concurrency_limits/increment"):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
        return await client.post(path, json=body)


@pytest.mark.anyio
async def test_a_refused_request_is_answered_again_with_its_body():
    app, seen = _app(refusals=3)
    wrapped = RetryRefused(app)
    response = await _post(wrapped, {"slots": 7})
    assert response.status_code == 200
    assert response.json() == {"acquired": 7}
    assert wrapped.retried == 3
    assert seen == [b'{"slots":7}'] * 4  # the same body each time, under the same path


@pytest.mark.anyio
async def test_a_request_refused_for_longer_gets_the_503():
    app, seen = _app(refusals=10_000)
    wrapped = RetryRefused(app, retry_for_s=0.2)
    response = await _post(wrapped, {"slots": 1})
    assert response.status_code == 503
    assert 2 <= len(seen) < 100


@pytest.mark.anyio
async def test_a_request_to_another_endpoint_is_not_run_again():
    app, seen = _app(refusals=1)
    wrapped = RetryRefused(app)
    response = await _post(wrapped, {"slots": 1}, path="/api/logs/")
    assert response.status_code == 503  # logs commit in batches: a rerun could repeat some
    assert len(seen) == 1 and wrapped.retried == 0


@pytest.mark.anyio
async def test_without_the_middleware_the_client_sees_the_refusal():
    app, _ = _app(refusals=1)
    response = await _post(app, {"slots": 1})
    assert response.status_code == 503  # what RetryRefused saves the client from


@pytest.fixture
def anyio_backend():
    return "asyncio"


PROBE = """
import sys
import psutil
from headroom import prefect as _  # what every flow module of this project imports
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    client.hello()
[server] = [p for p in psutil.Process().children() if "create_app" in " ".join(p.cmdline())]
print(" ".join(server.cmdline()))
print("server code imported here:", "prefect.server.api.server" in sys.modules)
from prefect.settings import PREFECT_UI_URL
print("UI URL:", PREFECT_UI_URL.value() or None)  # no "View at" link to a server with no UI
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("switch", "factory"),
    [("1", "headroom.server.app:create_app"), ("0", "prefect.server.api.server:create_app")],
)
def test_the_embedded_default_starts_headroom_app(tmp_path, switch, factory):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path)
    env["HEADROOM_PREFECT_APP"] = switch
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert factory in done.stdout
    # headroom's server listens before it boots and the process talks to it by its URL:
    # Prefect's server code is imported by the server only. Prefect's own is found by it.
    assert f"server code imported here: {switch == '0'}" in done.stdout
    assert "UI URL: None" in done.stdout
