"""docs/PRODUCTION.md's Dask set-up: a scheduler bound to 127.0.0.1 with TLS serves a worker
and a client that hold certificates of its CA (the client configured by environment, as
documented) and refuses a client without one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil

DASK = str(Path(sys.executable).with_name("dask"))
_CLIENT = """
from distributed import Client
with Client(__import__("sys").argv[1], timeout=30) as client:
    print(client.submit(sum, [1, 2, 3]).result())
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pem_files(directory: Path) -> dict[str, str]:
    from distributed.security import Security

    made = Security.temporary()  # one self-signed certificate: CA and every peer's cert
    files = {"ca": made.tls_ca_file, "cert": made.tls_scheduler_cert}
    files["key"] = made.tls_scheduler_key
    paths = {}
    for name, text in files.items():
        paths[name] = str(directory / f"{name}.pem")
        Path(paths[name]).write_text(text)
    return paths


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_tls_scheduler_on_localhost_serves_only_certified_peers(tmp_path):
    pem = _pem_files(tmp_path)
    tls = ["--tls-ca-file", pem["ca"], "--tls-cert", pem["cert"], "--tls-key", pem["key"]]
    port = _free_port()
    address = f"tls://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    started = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--protocol", "tls"]
            + ["--dashboard-address", "127.0.0.1:0", *tls],
            **quiet,
        )
    ]
    try:
        started.append(
            subprocess.Popen(
                [DASK, "worker", address, "--nworkers", "1", "--nthreads", "1"]
                + ["--memory-limit", "300MiB", "--host", "127.0.0.1"]
                + ["--dashboard-address", "127.0.0.1:0", *tls],
                **quiet,
            )
        )
        env = dict(
            os.environ,
            DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION="true",
            DASK_DISTRIBUTED__COMM__TLS__CA_FILE=pem["ca"],
            DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=pem["cert"],
            DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=pem["key"],
        )
        done = subprocess.run(
            [sys.executable, "-c", _CLIENT, address], env=env, capture_output=True, timeout=90
        )
        assert done.stdout.decode().strip() == "6", done.stderr.decode()[-2000:]
        # Scheduler, nanny and worker (and their diagnostics servers): on 127.0.0.1 only.
        processes = [psutil.Process(p.pid) for p in started]
        processes += psutil.Process(started[1].pid).children(recursive=True)
        listening = {
            (process.pid, c.laddr.ip)
            for process in processes
            for c in process.net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert len({pid for pid, _ in listening}) >= 3  # the worker process and its nanny too
        assert {ip for _, ip in listening} == {"127.0.0.1"}
        # No certificate: the scheduler does not let this client in.
        refused = subprocess.run(
            [sys.executable, "-c", _CLIENT, f"tcp://127.0.0.1:{port}"],
            capture_output=True,
            timeout=90,
            env={k: v for k, v in os.environ.items() if not k.startswith("DASK_")},
        )
        assert refused.returncode != 0 and refused.stdout.decode().strip() != "6"
    finally:
        _stop(started)
