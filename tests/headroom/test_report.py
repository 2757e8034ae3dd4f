"""The memory chart: its y axis fits what the tasks held, the budget drawn only in range."""

from __future__ import annotations

import matplotlib.pyplot as plt

from headroom.prefect.report import Attempt, attempts_key, timeline_figure, timeline_png


def _attempt(task: str, started: float, seconds: float, cap: float, peak: float) -> Attempt:
    return Attempt(task, f"{task}-run", 1, 1000, "default", cap, peak, started, seconds, "ok")


SMALL = [_attempt("a", 0.0, 2.0, 64, 41), _attempt("b", 1.0, 2.0, 64, 58)]


def _labels(axis) -> list[str]:
    return [line.get_label() for line in axis.get_lines()]


def test_small_tasks_under_a_large_budget_fill_the_chart_without_the_budget_line():
    figure = timeline_figure(SMALL, budget_mb=19250, host_limit_mb=18950)
    try:
        axis = figure.axes[0]
        bottom, top = axis.get_ylim()
        assert bottom == 0
        # Both tasks at once held 128 MiB of caps: the axis ends a little above that.
        assert 128 <= top < 200, top
        assert not any(label.startswith(("budget", "task memory limit")) for label in _labels(axis))
        assert "budget 18.8 GiB" in axis.get_title()
    finally:
        plt.close(figure)


def test_a_budget_within_the_range_is_a_labelled_line():
    tight = [_attempt("a", 0.0, 2.0, 900, 700), _attempt("b", 0.5, 2.0, 900, 850)]
    figure = timeline_figure(tight, budget_mb=1900, host_limit_mb=1600)
    try:
        axis = figure.axes[0]
        assert axis.get_ylim()[1] >= 1900
        labels = _labels(axis)
        assert "budget 1.9 GiB" in labels, labels
        assert any(label.startswith("task memory limit") for label in labels), labels
        budget_line = next(line for line in axis.get_lines() if line.get_label().startswith("b"))
        assert list(budget_line.get_ydata()) == [1900, 1900]
    finally:
        plt.close(figure)


def test_the_png_is_an_image():
    assert timeline_png(SMALL, 19250, 18950).startswith(b"\x89PNG")


def test_attempts_keys_are_what_prefect_accepts_one_per_task():
    from prefect.client.schemas.actions import ArtifactCreate

    for task, key in (
        ("grow-with-chunk", "attempts-grow-with-chunk"),
        ("stage_day", "attempts-stage-day"),
        ("Stream Micro.Batches (GPU)", "attempts-stream-micro-batches-gpu"),
    ):
        assert attempts_key(task) == key
        ArtifactCreate(key=key, type="table", data=[])  # Prefect's own key validation
