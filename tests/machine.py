"""What this machine offers, told by tools independent of the code under test."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess


def nvidia_smi_totals_mib() -> list[int]:
    """Total memory (MiB) of each GPU nvidia-smi lists; empty without nvidia-smi or a GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    listed = subprocess.run(
        [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if listed.returncode != 0:
        return []
    return [int(float(line)) for line in listed.stdout.split() if line.strip()]


def offers_a_gpu_to_cupy() -> bool:
    """nvidia-smi lists a GPU and CuPy is installed."""
    return bool(nvidia_smi_totals_mib()) and importlib.util.find_spec("cupy") is not None
