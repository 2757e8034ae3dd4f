"""``python -m headroom`` on a machine without a GPU shows no GPU cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _headroom(tmp_path: Path, *args: str) -> str:
    # NVML that cannot load: what a machine without an NVIDIA driver looks like to headroom.
    (tmp_path / "pynvml.py").write_text("raise ImportError('no NVIDIA driver here')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-m", "headroom", "--limit", "2GiB", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_without_a_gpu_the_gpu_tag_has_no_cap(tmp_path):
    facts = json.loads(_headroom(tmp_path, "--json"))
    assert facts["gpus"] == []
    assert facts["tags"]["gpu"]["cap_mb"] is None
    assert facts["tags"]["mitma-od"]["cap_mb"] == 300  # the other tags keep theirs
    text = _headroom(tmp_path)
    gpu_rows = [line for line in text.splitlines() if line.startswith("gpu")]
    assert gpu_rows, text
    assert all("MiB" not in row and "GiB" not in row for row in gpu_rows), gpu_rows
    assert any("no GPU visible" in row for row in gpu_rows), gpu_rows
