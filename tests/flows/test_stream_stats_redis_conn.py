"""How the Redis source connects: rediss:// is TLS with the certificate checked, unix:// is a
unix socket, a closed port names host and parameter. Real redis-server processes, stopped after."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deployments.ports import free_port
from flows.stream_stats.compute.baseline import compare_with_baseline
from flows.stream_stats.consume import run_micro_batches
from flows.stream_stats.params import StreamParams
from flows.stream_stats.sources.embedded import fraud_dataset, read_events
from flows.stream_stats.sources.resp import RespConnection
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
SPEC = StreamParams(source="x", sink="x", window="1min", watermark="3min").spec()
PASSWORD = "not-in-plaintext-42"


def redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is not installed; CI must run this test")
        pytest.skip("redis-server is not installed")
    return binary


def start(argv: list[str], ready: callable) -> subprocess.Popen:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start: {process.stderr.read()[-500:]!r}")
        time.sleep(0.02)
    return process


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.fixture
def unix_redis(tmp_path):
    path = tmp_path / "redis.sock"
    process = start(
        [
            redis_server(),
            "--port",
            "0",
            "--unixsocket",
            str(path),
            "--save",
            "",
            "--daemonize",
            "no",
            "--appendonly",
            "no",
        ],
        path.exists,
    )
    yield path
    stop(process)


@pytest.fixture
def tls_redis(tmp_path):
    """redis-server with TLS only, a password, and a certificate from a throwaway CA."""
    openssl = shutil.which("openssl") or pytest.skip("openssl is not installed")
    run = lambda *a: subprocess.run([openssl, *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    )
    port = free_port()
    process = start(
        [
            redis_server(),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(tmp_path / "server.pem"),
            "--tls-key-file",
            str(tmp_path / "server.key"),
            "--tls-ca-cert-file",
            str(tmp_path / "ca.pem"),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        lambda: accepts(port),
    )
    yield port, tmp_path / "ca.pem"
    stop(process)


def test_unix_url_connects_to_the_unix_socket_and_streams(unix_redis, tmp_path):
    url = f"unix://{unix_redis}"
    conn = RespConnection(url)
    conn.command("SET", "where", "unix")
    assert conn.command("GET", "where") == b"unix"
    conn.close()
    dataset = fraud_dataset(tmp_path / "d", transactions=3_000, seed=2, files=1)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.stream_stats.producer",
            "produce",
            str(dataset),
            "--redis",
            url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-1000:]
    result = run_micro_batches(
        f"{url}?stream=fraud:transactions&group=stats",
        str(tmp_path / "s.duckdb"),
        SPEC.window_ms,
        SPEC.slide_ms,
        SPEC.watermark_ms,
        list(SPEC.keys),
        1_000,
        idle_s=0.3,
    )
    assert result["events"] == 3_000
    assert compare_with_baseline(tmp_path / "s.duckdb", read_events(dataset), SPEC) == []
    # It all went to the server on the unix socket (not to a TCP Redis on 6379).
    import redis

    direct = redis.Redis(unix_socket_path=str(unix_redis))
    assert direct.get("where") == b"unix" and direct.xlen("fraud:transactions") == 3_000
    direct.close()


def test_rediss_is_tls_with_the_certificate_checked(tls_redis):
    port, ca = tls_redis
    conn = RespConnection(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    assert conn.command("PING") == b"PONG"
    conn.command("XADD", "s", "*", "k", "v")
    assert conn.command("XLEN", "s") == 1
    conn.close()
    # Without the CA the server's certificate is not trusted: refused, not silently accepted.
    with pytest.raises(ConnectionError, match=rf"TLS with Redis at 127\.0\.0\.1:{port}.*verify"):
        RespConnection(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0")
    # And plain redis:// to the TLS port does not get an answer as if it were TLS.
    with pytest.raises((ConnectionError, OSError)):
        RespConnection(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", timeout_s=3).command("PING")


def test_rediss_to_a_plaintext_server_never_sends_the_password():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    received = bytearray()

    def plaintext_server() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        try:
            while chunk := conn.recv(65536):
                received.extend(chunk)
                conn.sendall(b"+OK\r\n")  # a plaintext Redis answer, not a TLS record
        except OSError:
            pass
        conn.close()

    thread = threading.Thread(target=plaintext_server)
    thread.start()
    with pytest.raises(ConnectionError, match=rf"parameter source: TLS with Redis at .*:{port}"):
        RespConnection(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0", timeout_s=5)
    thread.join(10)
    listener.close()
    assert received[:1] == b"\x16"  # the first bytes were a TLS handshake record
    assert PASSWORD.encode() not in received and b"AUTH" not in received


def test_closed_port_names_host_and_parameter():
    port = free_port()
    with pytest.raises(ConnectionError, match=rf"parameter source: Redis at 127\.0\.0\.1:{port}"):
        run_micro_batches(
            f"redis://127.0.0.1:{port}/0?stream=s&group=g",
            "/nonexistent/never.duckdb",
            SPEC.window_ms,
            SPEC.slide_ms,
            SPEC.watermark_ms,
            list(SPEC.keys),
            1_000,
        )
