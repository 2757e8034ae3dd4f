"""Shared fixtures: isolated Prefect and headroom state, real local services and servers.

Services (Redis, PostgreSQL) are skipped with a reason when unreachable on a laptop, but
never under CI (CI=true), where an unreachable service fails the test.
"""

from __future__ import annotations

import functools
import http.server
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.ports import free_port
from deployments.production.throwaway import throwaway_server

_STATE = Path(tempfile.mkdtemp(prefix="headroom-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_STATE / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["HEADROOM_STATE_DIR"] = str(_STATE / "headroom")
# A fixed budget: tests must not depend on how big the machine is.
os.environ.setdefault("HEADROOM_MEMORY_LIMIT", "4GiB")

# The project's declared limits plus the test-only tags, as one declaration for the session.
_ROOT = Path(__file__).resolve().parent.parent
_LIMITS = _STATE / "limits.toml"
_LIMITS.write_text(
    (_ROOT / "deployments" / "limits.toml").read_text()
    + "\n"
    + (_ROOT / "tests" / "limits-extra.toml").read_text()
)
os.environ["HEADROOM_LIMITS"] = str(_LIMITS)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or, under CI, fail) when a local service does not accept connections."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        message = f"{name} is not reachable on {host}:{port} ({exc})"
        if IN_CI:
            pytest.fail(f"{message}; CI must run this test")
        pytest.skip(message)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _send_queued_logs() -> None:
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect server for the session, with headroom's limits created: on the local
    PostgreSQL when it is reachable, else prefect's SQLite test harness."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.setup import apply_limits

    if _reachable("127.0.0.1", 5432) and os.environ.get("HEADROOM_TEST_SQLITE") != "1":
        with throwaway_server(_STATE / "prefect-pg-server") as url:
            os.environ["PREFECT_API_URL"] = url  # for subprocesses the tests start
            try:
                with temporary_settings({PREFECT_API_URL: url}):
                    apply_limits()
                    yield
                    _send_queued_logs()  # before the server goes, not into its absence
            finally:
                os.environ.pop("PREFECT_API_URL", None)
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        apply_limits()
        yield


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def postgres_dsn() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return "postgresql://postgres@127.0.0.1:5432/postgres"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def http_server() -> Iterator[callable]:
    """Start real HTTP servers on 127.0.0.1: ``url = http_server(directory)``."""
    servers = []

    def serve(directory: str | os.PathLike[str]) -> str:
        handler = functools.partial(_QuietHandler, directory=os.fspath(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[dict[str, str]]:
    """A real S3-compatible server (moto, server mode) on 127.0.0.1, with its settings."""
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        yield settings
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the local S3 server; the AWS_* environment points at it."""
    import uuid

    import boto3

    for key, value in s3_endpoint.items():
        monkeypatch.setenv(key, value)
    name = f"test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return name
