"""What every benchmark needs: measure a command's whole process tree, record figures.

A subject runs as its own process (``python -c`` or a module) so that its peak RSS and CPU
seconds cover the whole tree it starts: children, guarded workers, an ephemeral server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


@dataclass
class Measurement:
    """One run of a subject: wall seconds, CPU seconds (user+sys) of the tree, peak RSS."""

    label: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    returncode: int
    output: str

    def per_core(self, units: float) -> float:
        """Units (rows, events, tasks) per CPU second of the whole tree."""
        return units / self.cpu_s if self.cpu_s > 0 else float("nan")


def measure(
    label: str,
    argv: list[str],
    env: dict[str, str | None] | None = None,
    timeout_s: float = 1800,
    interval_s: float = 0.05,
) -> Measurement:
    """Run ``argv`` and sample the summed RSS of its process tree until it exits.
    ``env`` is laid over this environment; a None value removes the variable."""
    started = time.monotonic()
    merged = {**os.environ, **(env or {})}
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={k: v for k, v in merged.items() if v is not None},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(process.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            total = 0
            try:
                members = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for member in members:
                try:
                    total += member.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total / (1 << 20))
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output_lines: list[str] = []
    reader = threading.Thread(target=lambda: output_lines.extend(process.stdout or []), daemon=True)
    reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    reader.join(timeout=5)
    if wall > timeout_s:
        raise TimeoutError(f"{label} ran {wall:.0f} s")
    output = "".join(output_lines)
    if process.returncode != 0:
        print(output[-4000:], file=sys.stderr)
    return Measurement(
        label, wall, usage.ru_utime + usage.ru_stime, peak[0], process.returncode, output
    )


def python(code: str) -> list[str]:
    """argv that runs ``code`` in this interpreter."""
    return [sys.executable, "-c", code]


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine_line() -> str:
    """One line about the machine the figures come from."""
    memory = psutil.virtual_memory().total / (1 << 30)
    return (
        f"{os.cpu_count()} cores, {memory:.0f} GiB, Python {sys.version.split()[0]}, "
        f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def write_section(name: str, markdown: str) -> None:
    """Replace (or add) the section ``name`` of BENCHMARKS.md with ``markdown``."""
    import fcntl

    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    with open(ROOT / ".benchmarks.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several benchmarks may finish at once
        text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
        _replace(text, begin, end, markdown)


def _replace(text: str, begin: str, end: str, markdown: str) -> None:
    block = f"{begin}\n{markdown.strip()}\n\n_{machine_line()}_\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else (text.rstrip() + "\n\n" + block + "\n")
    )
    BENCHMARKS_MD.write_text(text)
