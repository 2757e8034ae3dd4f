"""Reading a sink's results, and the exact per-event baseline they are checked against.

Pure logic without prefect: the benchmark's subject and the tests' truth.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from flows.stream_stats.compute.sketches import HLL_REL_ERROR, KLL_RANK_ERROR
from flows.stream_stats.windows import P95, WindowSpec


def read_windows(sink: str | os.PathLike[str]) -> Any:
    """Every (window, key) row of a sink as a pandas DataFrame, ordered."""
    import duckdb

    with duckdb.connect(os.fspath(sink), read_only=True) as db:
        return db.execute("SELECT * FROM window_stats ORDER BY ALL").df()


def baseline_aggregate(events: list[dict[str, Any]], spec: WindowSpec) -> dict[str, Any]:
    """Per-event Python aggregation (a dict per window and key), same semantics, exact.

    ``events`` in stream order, each with ts (ms), amount, customer_id, is_fraud and the keys.
    """
    groups: dict[tuple, dict[str, Any]] = {}
    late: dict[tuple, int] = {}
    max_seen = None
    copies = spec.per_event
    for e in events:
        ts = e["ts"]
        watermark = None if max_seen is None else max_seen - spec.watermark_ms
        first = ts - ts % spec.slide_ms
        key = tuple(e[k] for k in spec.keys)
        for j in range(copies):
            start = first - j * spec.slide_ms
            group = (start, key)
            if watermark is not None and start + spec.window_ms <= watermark:
                late[group] = late.get(group, 0) + 1
                continue
            g = groups.get(group)
            if g is None:
                g = groups[group] = {"amounts": [], "customers": set(), "fraud": 0}
            g["amounts"].append(e["amount"])
            g["customers"].add(e["customer_id"])
            g["fraud"] += bool(e["is_fraud"])
        max_seen = ts if max_seen is None else max(max_seen, ts)
    result = {}
    for group, g in groups.items():
        amounts = sorted(g["amounts"])
        n = len(amounts)
        mean = sum(amounts) / n
        m2 = sum((x - mean) ** 2 for x in amounts)
        result[group] = {
            "events": n,
            "amount_sum": sum(amounts),
            "amount_mean": mean,
            "amount_std": math.sqrt(m2 / (n - 1)) if n > 1 else float("nan"),
            "amount_min": amounts[0],
            "amount_max": amounts[-1],
            "fraud_events": g["fraud"],
            "amount_p95": amounts[math.ceil(P95 * n) - 1],
            "distinct_customers": len(g["customers"]),
            "amounts": amounts,
        }
    return {"windows": result, "late": late}


def compare_with_baseline(
    sink: str | os.PathLike[str], events: list[dict[str, Any]], spec: WindowSpec
) -> list[str]:
    """Every difference between a sink and the exact per-event baseline over ``events``.

    Counts, sums, min/max, fraud and late counts must be equal (sums and moments to 1e-9
    relative); p95 must be exact where the sink says so, else its true rank within
    KLL_RANK_ERROR of 0.95; distinct customers exact or within HLL_REL_ERROR.
    """
    truth = baseline_aggregate(events, spec)
    frame = read_windows(sink)
    problems: list[str] = []
    seen = set()
    for row in frame.to_dict("records"):
        group = (int(row["window_start_ms"]), tuple(row[k] for k in spec.keys))
        seen.add(group)
        name = f"window {group}"
        late = truth["late"].get(group, 0)
        if row["late_events"] != late:
            problems.append(f"{name}: late {row['late_events']} != {late}")
        expected = truth["windows"].get(group)
        if expected is None:
            if row["events"]:
                problems.append(f"{name}: {row['events']} events, expected none")
            continue
        for column in ("events", "fraud_events"):
            if row[column] != expected[column]:
                problems.append(f"{name}: {column} {row[column]} != {expected[column]}")
        for column in ("amount_sum", "amount_mean", "amount_min", "amount_max", "amount_std"):
            a, b = float(row[column]), float(expected[column])
            if not (
                math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
            ):
                problems.append(f"{name}: {column} {a} != {b}")
        amounts = np.asarray(expected["amounts"])
        p95 = float(row["amount_p95"])
        if row["p95_exact"]:
            if p95 != expected["amount_p95"]:
                problems.append(f"{name}: exact p95 {p95} != {expected['amount_p95']}")
        else:
            below, upto = (amounts < p95).mean(), (amounts <= p95).mean()
            if below > P95 + KLL_RANK_ERROR or upto < P95 - KLL_RANK_ERROR:
                problems.append(f"{name}: p95 {p95} has rank [{below}, {upto}]")
        distinct, true = int(row["distinct_customers"]), expected["distinct_customers"]
        if (
            distinct != true
            if row["distinct_exact"]
            else abs(distinct - true) > max(1.0, HLL_REL_ERROR * true)
        ):
            problems.append(f"{name}: distinct {distinct} vs {true}")
    for group in set(truth["windows"]) | set(truth["late"]):
        if group not in seen:
            problems.append(f"window {group}: missing from the sink")
    return problems
