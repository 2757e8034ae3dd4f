"""Open windows: moments plus KLL and HLL sketches, merged across batches.

Pure logic without prefect. An open window keeps count, mean and M2 (Chan's parallel merge),
a KLL sketch for p95 and an HLL sketch for distinct customers (datasketches, imported when
first needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from flows.stream_stats.windows import P95

KLL_K = 200
HLL_LG_K = 12


# Stated sketch errors (datasketches' own bounds for these parameters).
KLL_RANK_ERROR = 0.0133  # normalised rank error, 99 % confidence, k=200
HLL_REL_ERROR = 0.038  # relative error, 3 standard deviations, lg_k=12


@dataclass
class OpenWindow:
    """The state of one (window, key) that may still receive events."""

    window_start: int
    keys: tuple[str, ...]
    events: int = 0
    amount_sum: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    amount_min: float = math.inf
    amount_max: float = -math.inf
    fraud_events: int = 0
    kll: Any = None
    hll: Any = None
    exact: bool = True  # still holding every value (p95 / distinct not yet estimated)

    def merge(
        self,
        count: int,
        total: float,
        m2: float,
        low: float,
        high: float,
        frauds: int,
        amounts: np.ndarray,
        customers: np.ndarray,
    ) -> None:
        """Fold one batch's aggregates for this group in (Chan et al. for the moments)."""
        import datasketches as ds

        if self.kll is None:
            self.kll = ds.kll_doubles_sketch(KLL_K)
            self.hll = ds.hll_sketch(HLL_LG_K, ds.tgt_hll_type.HLL_8)
        before = self.events
        n = before + count
        batch_mean = total / count
        delta = batch_mean - self.mean
        self.mean += delta * count / n
        self.m2 += m2 + delta * delta * before * count / n
        self.events = n
        self.amount_sum += total
        self.amount_min = min(self.amount_min, low)
        self.amount_max = max(self.amount_max, high)
        self.fraud_events += frauds
        self.kll.update(amounts)
        update = self.hll.update
        for customer in customers.tolist():
            update(customer)

    def p95(self) -> tuple[float, bool]:
        """(p95 of amount, whether it is exact)."""
        exact = not self.kll.is_estimation_mode()
        return float(self.kll.get_quantile(P95, True)), exact

    def distinct(self) -> tuple[int, bool]:
        """(distinct customers, whether it is exact): HLL list mode counts every coupon."""
        return int(round(self.hll.get_estimate())), False


def _std(m2: np.ndarray | float, n: np.ndarray | int) -> Any:
    """Sample standard deviation (ddof 1); NaN for a single event."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.asarray(n) > 1, np.sqrt(np.asarray(m2) / (np.asarray(n) - 1)), np.nan)
