"""Screenshots of what a user sees in the Prefect UI, for docs/img/ (re-runnable).

    .venv/bin/python scripts/screenshots.py [--out docs/img]

Starts ``python -m deployments.serve`` on a free port with a throw-away PREFECT_HOME, runs the
oom-drill deployment once (small), then has headless Chromium take:

- ``run-form.png``: the fraud-synth-weekly deployment's custom-run form;
- ``memory-report.png``: the oom-drill run's memory-report artifact;

and stops serve. Needs Chromium (Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployments.production.throwaway import free_port  # noqa: E402

PREFECT = str(Path(sys.executable).with_name("prefect"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("no Chromium found: apt-get install -y chromium")


def screenshot(url: str, target: Path, size: str, scratch: Path) -> None:
    """One page, after its scripts had time to render it, into ``target``."""
    profile = Path(tempfile.mkdtemp(dir=scratch, prefix="chromium-"))
    argv = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    argv += [f"--window-size={size}", "--virtual-time-budget=20000"]
    argv += [f"--screenshot={target}", url]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    print(f"{target} <- {url}")


def start_serve(home: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        HEADROOM_STATE_DIR=str(home / "headroom"),
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    output = home / "serve.out"
    argv = [sys.executable, "-m", "deployments.serve", "--port", str(port)]
    argv += ["--state-dir", str(home / "serve"), "--only", "oom-drill", "fraud-synth-weekly"]
    with open(output, "wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 300
    while "serving: UI" not in output.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            sys.exit(f"serve did not come up:\n{output.read_text()[-3000:]}")
        time.sleep(1)
    return process, output


def deployment_id(api: str, name: str) -> str:
    body = {"deployments": {"name": {"any_": [name]}}}
    (record,) = httpx.post(f"{api}/deployments/filter", json=body).raise_for_status().json()
    return record["id"]


def memory_report_id(api: str) -> str:
    """Run oom-drill once and return its memory-report artifact's id."""
    env = {**os.environ, "PREFECT_API_URL": api}
    argv = [PREFECT, "deployment", "run", "--id", deployment_id(api, "oom-drill"), "--watch"]
    argv += ["--param", "parts=2", "--param", "rows=200000"]
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=300)
    body = {"artifacts": {"key": {"any_": ["memory-report"]}}}
    artifacts = httpx.post(f"{api}/artifacts/filter", json=body).raise_for_status().json()
    return artifacts[-1]["id"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="headroom-shots-") as scratch:
        home = Path(scratch)
        port = free_port()
        ui, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
        process, _ = start_serve(home, port)
        try:
            fraud = deployment_id(api, "fraud-synth-weekly")
            screenshot(
                f"{ui}/deployments/deployment/{fraud}/run",
                args.out / "run-form.png",
                "1280,1900",
                home,
            )
            report = memory_report_id(api)
            screenshot(
                f"{ui}/artifacts/artifact/{report}",
                args.out / "memory-report.png",
                "1280,1100",
                home,
            )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
