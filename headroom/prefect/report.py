"""Attempt records of budgeted tasks and the memory-timeline report of a flow run.

Attempts are appended as JSON lines to one file per flow run under the state directory, so
tasks in threads, Dask workers and children on this host all feed the same report.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headroom.state import runs_dir, state_dir
from headroom.units import format_mib


@dataclass
class Attempt:
    """One attempt of a budgeted task: what it was given, what it used, how it ended."""

    task: str
    task_run_id: str
    attempt: int
    chunk: int | None
    chunk_origin: str
    cap_mb: float
    peak_mb: float | None
    started: float
    seconds: float
    outcome: str  # "ok", an OutOfMemory kind, or an exception type name

    def row(self) -> dict[str, object]:
        """The row shown in a task's attempts table."""
        return {
            "attempt": self.attempt,
            "chunk": self.chunk,
            "chunk from": self.chunk_origin,
            "cap MiB": round(self.cap_mb),
            "peak MiB": None if self.peak_mb is None else round(self.peak_mb),
            "seconds": round(self.seconds, 2),
            "outcome": self.outcome,
        }


def attempts_key(task: str) -> str:
    """The artifact key of a task's attempts table: Prefect keys are lowercase letters, digits
    and dashes; one key per task keeps each run's tables apart and versions them across runs."""
    slug = re.sub(r"[^a-z0-9]+", "-", task.lower()).strip("-")
    return f"attempts-{slug or 'task'}"


def attempts_file(flow_run_id: str) -> Path:
    return runs_dir() / f"{flow_run_id}.jsonl"


def record_attempt(flow_run_id: str | None, attempt: Attempt) -> None:
    """Append one attempt to its flow run's record (one short write: atomic with O_APPEND)."""
    if not flow_run_id:
        return
    path = attempts_file(flow_run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(asdict(attempt)) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def load_attempts(flow_run_id: str) -> list[Attempt]:
    path = attempts_file(flow_run_id)
    if not path.exists():
        return []
    return [Attempt(**json.loads(line)) for line in path.read_text().splitlines() if line]


def timeline_png(attempts: list[Attempt], budget_mb: float, host_limit_mb: float) -> bytes:
    """A chart of the memory held by running tasks over time against the budget."""
    import matplotlib.pyplot as plt

    figure = timeline_figure(attempts, budget_mb, host_limit_mb)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def timeline_figure(attempts: list[Attempt], budget_mb: float, host_limit_mb: float) -> Any:
    """The chart as a matplotlib figure: the y axis fits the largest of the peaks and caps, so
    tasks far below the budget still show their shape; the budget and the task memory limit
    are drawn as labelled lines only where they fall inside that range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(a.started for a in attempts)
    edges = sorted(
        {a.started - start for a in attempts} | {a.started + a.seconds - start for a in attempts}
    )
    peaks, caps = [], []
    for t in edges:
        live = [a for a in attempts if a.started - start <= t < a.started + a.seconds - start]
        peaks.append(sum(a.peak_mb or 0 for a in live))
        caps.append(sum(a.cap_mb for a in live))
    top = max(max(caps, default=0), max(peaks, default=0), 1.0) * 1.15
    figure, axis = plt.subplots(figsize=(9, 3.6), dpi=100)
    axis.step(edges, caps, where="post", label="caps of running tasks", color="#7f7f7f")
    axis.fill_between(
        edges, peaks, step="post", alpha=0.5, color="#1f77b4", label="peaks of running tasks"
    )
    for level, style, color, name in (
        (budget_mb, "--", "#d62728", "budget"),
        (host_limit_mb, ":", "#ff7f0e", "task memory limit"),
    ):
        if level <= top:
            axis.axhline(level, color=color, linestyle=style, label=f"{name} {format_mib(level)}")
    for a in attempts:
        if a.outcome != "ok":
            axis.axvline(a.started + a.seconds - start, color="#d62728", alpha=0.3)
    axis.set_xlabel("seconds since the first task started")
    axis.set_ylabel("MiB")
    axis.set_ylim(0, top)
    axis.legend(loc="upper right", fontsize=8)
    axis.set_title(
        f"memory of budgeted tasks (budget {format_mib(budget_mb)}; "
        "red lines: OOM or failed attempts)"
    )
    figure.tight_layout()
    return figure


def memory_report(
    flow_run_id: str, flow_name: str, budget_mb: float, host_limit_mb: float
) -> str | None:
    """Markdown for a flow run: the memory chart (PNG file + embedded) and the attempts."""
    attempts = load_attempts(flow_run_id)
    if not attempts:
        return None
    png = timeline_png(attempts, budget_mb, host_limit_mb)
    png_path = state_dir() / "reports" / f"{flow_run_id}.png"
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.write_bytes(png)
    ooms = [a for a in attempts if a.outcome in ("watchdog", "oom-killer", "allocator", "gpu")]
    largest_peak = max((a.peak_mb or 0) for a in attempts)
    lines = [
        f"# Memory of {flow_name}",
        "",
        f"Budget {format_mib(budget_mb)}, task memory limit {format_mib(host_limit_mb)}; "
        f"{len(attempts)} attempts, {len(ooms)} out of memory; largest single peak "
        f"{format_mib(largest_peak)}.",
        "",
        f"![memory timeline](data:image/png;base64,{base64.b64encode(png).decode()})",
        "",
        f"Chart file: `{png_path}`",
        "",
        "| task | attempt | chunk | cap MiB | peak MiB | seconds | outcome |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in sorted(attempts, key=lambda a: a.started):
        peak = "" if a.peak_mb is None else f"{a.peak_mb:.0f}"
        lines.append(
            f"| {a.task} | {a.attempt} | {a.chunk or ''} | {a.cap_mb:.0f} | {peak} | "
            f"{a.seconds:.2f} | {a.outcome} |"
        )
    return "\n".join(lines)
