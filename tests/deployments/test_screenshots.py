"""scripts/screenshots.py takes the README's pictures of what a user sees: the run form of
fraud-synth-weekly with every parameter's description, and an oom-drill run's memory report,
each fully drawn (not caught half-way through the UI's fade-in)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from flows.fraud_synth.params import FraudSynthParams
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]


def _bright_share(path: Path) -> float:
    """Share of the page's pixels drawn near white (text, headings at full opacity)."""
    histogram = Image.open(path).convert("L").histogram()
    return sum(histogram[150:]) / sum(histogram)


@pytest.mark.slow
def test_the_script_takes_the_run_form_and_the_memory_report(tmp_path):
    if not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
        if IN_CI:
            pytest.fail("Chromium is not installed; CI must run this test")
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    done = subprocess.run(
        [sys.executable, "scripts/screenshots.py", "--out", str(tmp_path), "--with-text"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    form = (tmp_path / "run-form.txt").read_text()
    assert "fraud-synth-weekly" in form
    for name, field in FraudSynthParams.model_fields.items():
        assert name in form and field.description in form, name
    report = (tmp_path / "memory-report.txt").read_text()
    assert "Memory of oom-drill" in report and "checksum-part" in report

    for name, size in (("run-form.png", (1280, 2150)), ("memory-report.png", (1280, 1100))):
        assert Image.open(tmp_path / name).size == size
    # A page caught fading in is dim all over: about 0.1 % of its pixels are bright, against
    # about 0.8 % once drawn.
    assert _bright_share(tmp_path / "run-form.png") > 0.004
    # What the README shows is such a picture too.
    assert _bright_share(ROOT / "docs" / "img" / "run-form.png") > 0.004
