"""Budgeted tasks: a body that lives in a module without prefect, run under a memory cap in a
guarded child, retried on out-of-memory (and declared transient errors) with a smaller chunk.

One attempt: Prefect's task engine takes the tag's slot; then :func:`execute` takes the cap's
``memory-mb`` slots (:mod:`headroom.prefect.admission`), picks the chunk from the task run's
:class:`~headroom.prefect.attempts.AttemptLog` and the learned history, runs the body
(:mod:`headroom.isolation.guard`), and records the attempt."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from headroom.budget import Budget
from headroom.errors import (
    ChunkFloorReached,
    OutOfMemory,
    classify_oom,
    is_terminal,
)
from headroom.isolation.guard import callable_path, guarded_call
from headroom.prefect.admission import admitted, current_budget, current_limits, server_host_limit
from headroom.prefect.artifacts import publish_attempts
from headroom.prefect.attempts import AttemptLog, OpenLogs, failed_outcome
from headroom.prefect.hooks import FLOW_TAG_FLOOR, FLOW_TAG_OOM, tag_flow_run
from headroom.prefect.report import Attempt, record_attempt
from headroom.sizing.chunks import Chunking, first_size, shrink
from headroom.sizing.history import History

ChunkScale = Annotated[
    float, Field(gt=0, le=1, description="Scale every first chunk size by this (0 < x <= 1).")
]


_open_logs = OpenLogs()


@dataclass(frozen=True)
class BudgetedSpec:
    """Everything headroom needs to run one kind of budgeted task."""

    target: str
    name: str
    tag: str
    chunk: Chunking | None
    input_bytes: Callable[[dict[str, Any]], int] | None
    oom_retries: int
    retries: int
    transient: tuple[type[BaseException], ...]
    isolate: bool
    timeout_s: float | None
    takes_cap: bool
    threads: int | None = None


def budgeted_task(
    body: Callable[..., Any] | str,
    *,
    tag: str,
    chunk: Chunking | None = None,
    input_bytes: Callable[[dict[str, Any]], int] | None = None,
    oom_retries: int = 4,
    retries: int = 0,
    transient: tuple[type[BaseException], ...] = (),
    isolate: bool = True,
    name: str | None = None,
    timeout_s: float | None = None,
    retry_delay_s: float = 0.0,
    extra_tags: tuple[str, ...] = (),
    threads: int | None = None,
):
    """Declare a budgeted Prefect task over ``body`` (a top-level function of a module that does
    not import prefect).

    The task's parameters are the body's, less the chunk parameter and ``cap_mb`` (which
    headroom fills in), plus ``chunk_scale``. ``tag`` gives the cap; ``extra_tags`` are further
    tag limits the task also holds a slot of (e.g. ``gpu`` beside the workload's tag).
    ``threads``: the cores the body keeps busy, for a body that never waits on I/O: such
    tasks of this process run no more at once than there are cores (:func:`cpu_slots`), while
    more of them may wait admitted, so a slot freed is taken without a server round trip.
    """
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    module_name, qualname = callable_path(body)
    function = body if callable(body) else _import(module_name, qualname)
    signature = inspect.signature(function)
    if chunk is not None and chunk.param not in signature.parameters:
        raise TypeError(f"{module_name}:{qualname} has no parameter {chunk.param!r}")
    hidden = {"cap_mb", chunk.param if chunk else None}
    visible = [p for n, p in signature.parameters.items() if n not in hidden]
    visible.append(
        inspect.Parameter(
            "chunk_scale", inspect.Parameter.KEYWORD_ONLY, default=1.0, annotation=float
        )
    )
    spec = BudgetedSpec(
        target=f"{module_name}:{qualname}",
        name=name or function.__name__.replace("_", "-"),
        tag=tag,
        chunk=chunk,
        input_bytes=input_bytes,
        oom_retries=oom_retries,
        retries=retries,
        transient=tuple(transient),
        isolate=isolate,
        timeout_s=timeout_s,
        takes_cap="cap_mb" in signature.parameters,
        threads=threads,
    )

    def run(*args: Any, **kwargs: Any) -> Any:
        bound = inspect.Signature(visible).bind(*args, **kwargs)
        bound.apply_defaults()
        call = dict(bound.arguments)
        chunk_scale = float(call.pop("chunk_scale"))
        return execute(spec, call, chunk_scale)

    run.__signature__ = inspect.Signature(visible)  # type: ignore[attr-defined]
    run.__name__ = function.__name__
    run.__qualname__ = function.__qualname__
    run.__module__ = function.__module__
    run.__doc__ = function.__doc__

    return task(  # type: ignore[call-overload]  # run's signature is built at runtime
        run,
        name=spec.name,
        tags=[tag, *extra_tags],
        retries=oom_retries + retries,
        retry_delay_seconds=retry_delay_s,
        retry_condition_fn=retry_oom_or_transient,
        cache_policy=NO_CACHE,
        persist_result=False,
    )


@dataclass(frozen=True)
class _TaskRun:
    """The Prefect task run an attempt belongs to."""

    task_run_id: str
    flow_run_id: str | None
    logger: Any


def retry_oom_or_transient(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` of a budgeted task: retry when its run's last attempt left a retry
    due (see headroom.prefect.attempts). Top level, so a task pickled for a Dask worker names it."""
    return _open_logs.is_open(str(task_run.id))


def execute(spec: BudgetedSpec, call: dict[str, Any], chunk_scale: float = 1.0) -> Any:
    """One attempt of a budgeted task, inside a Prefect task run: its cap, its chunk size,
    admission to the host's memory, the body under the cap, then the attempt's record."""
    run = _current_task_run(spec)
    log = _open_logs.open(run.task_run_id, spec.oom_retries, spec.retries)
    try:
        input_size = spec.input_bytes(call) if spec.input_bytes else None
        cap, budget = attempt_cap(spec.tag)
        size, origin = _choose_chunk(spec, log, cap, budget, input_size, chunk_scale, run)
    except BaseException:
        _open_logs.close(run.task_run_id)  # no body ran: a retry would meet the same
        raise
    kwargs = _body_arguments(spec, call, size, cap)
    attempt = Attempt(
        spec.name, run.task_run_id, log.next_number, size, origin, cap, None, time.time(), 0.0, "ok"
    )
    try:
        with admitted(spec, cap):
            attempt.started = time.time()
            value, attempt.peak_mb = _run_body(spec, kwargs, cap, size, input_size)
    except BaseException as exc:
        attempt.outcome = failed_outcome(exc, spec.transient)
        if isinstance(exc, OutOfMemory):
            attempt.peak_mb = exc.peak_mb
            tag_flow_run(run.flow_run_id, FLOW_TAG_OOM)
            raise exc.with_chunk(size) from None
        raise
    finally:
        attempt.seconds = time.time() - attempt.started
        _bookkeep(spec, run, log, attempt)
    return value


def _current_task_run(spec: BudgetedSpec) -> _TaskRun:
    from prefect import get_run_logger
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    if context is None:
        raise RuntimeError(f"{spec.name} must run as a Prefect task")
    flow_run_id = context.task_run.flow_run_id
    return _TaskRun(
        str(context.task_run.id), str(flow_run_id) if flow_run_id else None, get_run_logger()
    )


def attempt_cap(tag: str) -> tuple[float, Budget]:
    """(cap MiB, budget) of an attempt of a task of ``tag``: the tag's cap under the budget,
    and never more than the host's memory limit on the server."""
    limits = current_limits()
    budget = current_budget()
    return min(limits.cap_mb(tag, budget), server_host_limit(limits, budget)), budget


def _choose_chunk(
    spec: BudgetedSpec,
    log: AttemptLog,
    cap: float,
    budget: Budget,
    input_size: int | None,
    chunk_scale: float,
    run: _TaskRun,
) -> tuple[int | None, str]:
    """(size, where it came from) of this attempt's chunk: shrunk from the run's last OOM
    if it had one, else the first size (history, estimate or default, times chunk_scale)."""
    if spec.chunk is None:
        return None, ""
    oom = log.last_oom()
    if oom is None or oom.chunk is None:
        learned = History().profile(spec.name, input_size)
        return first_size(spec.chunk, cap, chunk_scale, learned)
    try:
        size = shrink(
            spec.chunk,
            oom.chunk,
            cap,
            oom.peak_mb,
            task=spec.name,
            budget_mb=budget.mb,
            host_mb=(budget.host_bytes or 0) / (1 << 20),
            tag=spec.tag,
        )
    except ChunkFloorReached:
        tag_flow_run(run.flow_run_id, FLOW_TAG_FLOOR)
        raise
    return size, "shrunk after OOM"


def _body_arguments(
    spec: BudgetedSpec, call: dict[str, Any], size: int | None, cap: float
) -> dict[str, Any]:
    """The call's arguments plus what headroom fills in: the chunk size and the cap."""
    kwargs = dict(call)
    if spec.chunk is not None:
        kwargs[spec.chunk.param] = size
    if spec.takes_cap:
        kwargs["cap_mb"] = cap
    return kwargs


def _run_body(
    spec: BudgetedSpec,
    kwargs: dict[str, Any],
    cap: float,
    size: int | None,
    input_size: int | None,
) -> tuple[Any, float | None]:
    """(value, peak MiB) of the body: in a guarded child under the cap (its peak learned for
    the next first size), or in this process for a task that must share it (peak unknown)."""
    if not spec.isolate:
        return _run_in_process(spec, kwargs, cap), None
    result = guarded_call(spec.target, (), kwargs, cap_mb=cap, timeout_s=spec.timeout_s)
    if size:
        History().record(spec.name, input_size, size, result.peak_mb, cap, result.base_mb)
    return result.value, result.peak_mb


def _bookkeep(spec: BudgetedSpec, run: _TaskRun, log: AttemptLog, attempt: Attempt) -> None:
    """Record the attempt (run log, flow run's record, run log line, attempts table) and
    settle whether the run retries."""
    log.record(attempt)
    record_attempt(run.flow_run_id, attempt)
    run.logger.info(
        "attempt %d: %s=%s (%s), cap %.0f MiB, peak %s MiB, %.2f s: %s",
        attempt.attempt,
        spec.chunk.param if spec.chunk else "chunk",
        attempt.chunk,
        attempt.chunk_origin or "-",
        attempt.cap_mb,
        "?" if attempt.peak_mb is None else f"{attempt.peak_mb:.0f}",
        attempt.seconds,
        attempt.outcome,
    )
    publish_attempts(spec, log.rows())
    _open_logs.settle(log)


def _run_in_process(spec: BudgetedSpec, kwargs: dict[str, Any], cap: float) -> Any:
    """Run the body here (GPU tasks keep one CUDA context); classify allocator/CUDA OOMs."""
    module_name, _, qualname = spec.target.partition(":")
    try:
        return _import(module_name, qualname)(**kwargs)
    except OutOfMemory:
        raise
    except Exception as exc:
        kind = classify_oom(exc)
        if kind:
            raise OutOfMemory(kind, cap, None, detail=str(exc)[:500]) from exc
        raise


def _import(module_name: str, qualname: str) -> Callable[..., Any]:
    import importlib

    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def retry_unless_terminal(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` of a plain task: retry a failure unless retrying cannot fix it
    (bad input, an output that cannot be written)."""
    error = getattr(state, "data", None)
    return not (isinstance(error, BaseException) and is_terminal(error))
