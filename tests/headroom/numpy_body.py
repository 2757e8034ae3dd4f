"""A body module that imports numpy at import time (its fork server holds numpy's state)."""

from __future__ import annotations

import random

import numpy.random  # its global generator is made here, in the fork server


def draw() -> tuple[float, float]:
    """A number from numpy's global generator and one from ``random``'s, in this process."""
    return float(numpy.random.random()), random.random()
