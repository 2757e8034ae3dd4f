"""Screenshots of what a user sees in the Prefect UI, for docs/img/ (re-runnable).

    .venv/bin/python scripts/screenshots.py [--out docs/img]

Starts ``python -m deployments.serve`` on a free port with a throw-away PREFECT_HOME, runs the
oom-drill deployment once (small), then has headless Chromium take:

- ``run-form.png``: the fraud-synth-weekly deployment's custom-run form;
- ``memory-report.png``: the oom-drill run's memory-report artifact;

and stops serve. Needs Chromium (Debian: ``apt-get install -y chromium``), driven over the
DevTools protocol. ``--with-text`` also writes the text each page shows (for the test).
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

from deployments.ports import free_port  # noqa: E402

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


def screenshot(url: str, target: Path, size: str, scratch: Path, ready_text: str) -> str:
    """One page into ``target``, once it shows ``ready_text`` and its fade-in is over; returns
    the text the page shows.

    Driven over the DevTools protocol: Chromium's own ``--screenshot`` fires on a virtual
    clock, which caught the UI's fade-in half-way (a dimmed page) on one run in two.
    """
    import base64
    import json

    from websockets.sync.client import connect

    profile = Path(tempfile.mkdtemp(dir=scratch, prefix="chromium-"))
    width, height = (int(n) for n in size.split(","))
    argv = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    argv += [f"--window-size={width},{height}", "--remote-debugging-port=0", "about:blank"]
    browser = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert browser.stderr is not None
        for line in browser.stderr:
            if line.startswith("DevTools listening on "):
                port = line.split("127.0.0.1:", 1)[1].split("/", 1)[0]
                break
        else:
            sys.exit("Chromium did not open its DevTools port")
        (page,) = [
            t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"
        ]
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            calls = iter(range(1, 1_000_000))

            def call(method: str, **params: object) -> dict:
                number = next(calls)
                ws.send(json.dumps({"id": number, "method": method, "params": params}))
                while True:
                    reply = json.loads(ws.recv(timeout=60))
                    if reply.get("id") == number:
                        if "error" in reply:
                            raise RuntimeError(f"{method}: {reply['error']}")
                        return reply["result"]

            call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                 deviceScaleFactor=1, mobile=False)  # fmt: skip
            call("Page.navigate", url=url)
            deadline = time.monotonic() + 90
            check = f"document.body && document.body.innerText.includes({json.dumps(ready_text)})"
            while not call("Runtime.evaluate", expression=check)["result"].get("value"):
                if time.monotonic() > deadline:
                    sys.exit(f"{url} never showed {ready_text!r}")
                time.sleep(0.5)
            time.sleep(3)  # the UI fades pages in; real time, not the virtual clock
            shot = call("Page.captureScreenshot", format="png")
            text = call("Runtime.evaluate", expression="document.body.innerText")["result"]
        target.write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.terminate()
        browser.wait(30)
    print(f"{target} <- {url}")
    return str(text.get("value", ""))


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


def wait_for_the_worker(api: str, timeout_s: float = 120) -> None:
    """Until the worker has polled its queue (the form's header shows it ready, not red)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queue = httpx.get(f"{api}/work_pools/headroom-process/queues/default")
        if queue.is_success and queue.json().get("status") == "READY":
            return
        time.sleep(1)
    sys.exit("the worker never polled its queue")


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
    parser.add_argument(
        "--with-text", action="store_true", help="also write the text each page shows (NAME.txt)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="headroom-shots-") as scratch:
        home = Path(scratch)
        port = free_port()
        ui, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
        process, _ = start_serve(home, port)
        shown: dict[str, str] = {}
        try:
            wait_for_the_worker(api)
            fraud = deployment_id(api, "fraud-synth-weekly")
            shown["run-form"] = screenshot(
                f"{ui}/deployments/deployment/{fraud}/run",
                args.out / "run-form.png",
                "1280,2150",
                home,
                ready_text="chunk_scale",
            )
            report = memory_report_id(api)
            shown["memory-report"] = screenshot(
                f"{ui}/artifacts/artifact/{report}",
                args.out / "memory-report.png",
                "1280,1100",
                home,
                ready_text="Show raw data",
            )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    if args.with_text:
        for name, text in shown.items():
            (args.out / f"{name}.txt").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
