"""Chunk policy and learned history, with real guarded children whose memory grows with
the chunk size."""

from __future__ import annotations

import pytest

from headroom import (
    ChunkFloorReached,
    Chunking,
    History,
    OutOfMemory,
    first_size,
    next_size,
    run_guarded_measured,
    shrink,
)
from tests.headroom import workers

SPEC = Chunking("rows_per_chunk", default=500_000, floor=5_000)
ROW = 1024  # bytes per row of workers.chunked_job


def test_next_size_is_the_smaller_of_half_and_the_peak_ratio():
    assert next_size(1000, cap_mb=300, peak_mb=310) == 500
    assert next_size(1000, cap_mb=300, peak_mb=1200) == 200  # 1000 * 0.8 * 300 / 1200
    assert next_size(1000, cap_mb=300, peak_mb=None) == 500


def test_first_size_order_history_then_estimate_then_default():
    assert first_size(SPEC, 300) == (500_000, "default")
    estimated = Chunking("rows", default=500_000, floor=10, bytes_per_row=2048)
    assert first_size(estimated, 300) == (int(300 * 0.8 * (1 << 20) / 2048), "estimate")
    size, origin = first_size(SPEC, 300, learned=(1024.0, 20.0))
    assert origin == "history" and size == int((300 * 0.8 - 20) * (1 << 20) / 1024)
    assert first_size(SPEC, 300, scale=0.5)[0] == 250_000
    with pytest.raises(ValueError, match="chunk_scale"):
        first_size(SPEC, 300, scale=1.5)


def test_floor_error_says_what_to_change():
    with pytest.raises(ChunkFloorReached) as caught:
        shrink(
            SPEC,
            5_000,
            cap_mb=300,
            peak_mb=400,
            task="stage-day",
            budget_mb=1536,
            host_mb=22 * 1024,
            tag="mitma-od",
        )
    text = str(caught.value)
    assert "300 MiB" in text and "5,000" in text and "HEADROOM_MEMORY_LIMIT" in text
    assert "1.5 GiB" in text and "22.0 GiB" in text and "mitma-od" in text


def _run_with_shrinking(history: History, cap_mb: float, input_bytes: int) -> list[str]:
    """The budgeted-task loop without Prefect: first size, then shrink after each OOM."""
    outcomes: list[str] = []
    size, _ = first_size(SPEC, cap_mb, learned=history.profile("job", input_bytes))
    while True:
        try:
            result = run_guarded_measured(workers.chunked_job, 600_000, size, ROW, cap_mb=cap_mb)
        except OutOfMemory as oom:
            outcomes.append(f"oom@{size}")
            size = shrink(SPEC, size, cap_mb, oom.peak_mb, task="job")
            continue
        history.record("job", input_bytes, size, result.peak_mb, cap_mb, result.base_mb)
        outcomes.append(f"ok@{size}")
        return outcomes


def test_shrinks_after_oom_and_next_run_starts_right_sized(tmp_path):
    history = History(tmp_path / "history.sqlite")
    input_bytes = 600_000 * ROW
    first = _run_with_shrinking(history, cap_mb=300, input_bytes=input_bytes)
    assert first[0] == "oom@500000" and first[-1].startswith("ok@")  # 488 MiB > 300 MiB
    second = _run_with_shrinking(history, cap_mb=300, input_bytes=input_bytes)
    assert len(second) == 1 and second[0].startswith("ok@")  # no OOM the second time
    smaller = _run_with_shrinking(history, cap_mb=150, input_bytes=input_bytes)
    assert len(smaller) == 1 and smaller[0].startswith("ok@")  # nor under a smaller budget


def test_history_is_per_task_and_size_class(tmp_path):
    history = History(tmp_path / "h.sqlite")
    history.record("a", 1 << 30, 1000, peak_mb=100, cap_mb=300, base_mb=20)
    per_row, base = history.profile("a", (1 << 30) + 5)
    assert per_row == pytest.approx(80 * (1 << 20) / 1000) and base == pytest.approx(20)
    assert history.profile("a", 1 << 20) is None
    assert history.profile("b", 1 << 30) is None
