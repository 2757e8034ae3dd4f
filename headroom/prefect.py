"""headroom on Prefect: budgeted tasks, OOM-only retries with smaller chunks, memory admission.

A budgeted task wraps a body function that lives in a module without prefect. Prefect's
task engine takes the slot of the task's tag (the tag concurrency limit); headroom then takes
``occupy=cap_mb`` of the per-host limit ``memory-mb:<hostname>``, picks this attempt's chunk
size, runs the body in a guarded child under the cap, and retries only out-of-memory errors
(and declared transient ones), each time with a smaller chunk.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any
from uuid import UUID

from pydantic import Field

from headroom import leases, temporary_server
from headroom.attempts import AttemptLog, OpenLogs, failed_outcome
from headroom.budget import Budget
from headroom.chunks import Chunking, first_size, shrink
from headroom.errors import (
    ChunkFloorReached,
    OutOfMemory,
    OutputUnavailable,
    TerminalError,
    classify_oom,
    is_terminal,
)
from headroom.guard import callable_path, guarded_call
from headroom.history import History
from headroom.limits import Limits, memory_limit_name, setup_hint
from headroom.report import Attempt, attempts_key, memory_report, record_attempt

ChunkScale = Annotated[
    float, Field(gt=0, le=1, description="Scale every first chunk size by this (0 < x <= 1).")
]
MaxWorkers = Annotated[
    int, Field(ge=1, le=64, description="Tasks this run submits at once (local concurrency).")
]

FLOW_TAG_OOM = "headroom:oom"
FLOW_TAG_FLOOR = "headroom:chunk-floor"
RERUN_TAG = "headroom:rerun"
_LIMIT_CACHE_S = 30.0
# Memory slots of a lost host come back when their lease expires; Prefect's default is 300 s.
# The engine's tag slots use 60 s, so both come back together.
MEMORY_LEASE_S = 60.0

_open_logs = OpenLogs()
_host_limit_cache: dict[str, tuple[float, int]] = {}
# Attempts tables are published in order by one thread (see _publish_attempts).
_artifacts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headroom-artifacts")


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


def _budget_block() -> Any:
    """The saved memory-budget block, or None (none saved, or no server to ask)."""
    try:
        from headroom.blocks import load_budget_block

        return load_budget_block()
    except Exception:
        return None


def current_budget() -> Budget:
    """The budget: $HEADROOM_MEMORY_LIMIT, else the memory-budget block, else detection."""
    from headroom.budget import ENV_LIMIT

    if os.environ.get(ENV_LIMIT):
        return Budget.detect()
    block = _budget_block()
    if block is not None:
        return Budget.detect(limit=block.limit or None, fraction=block.fraction)
    return Budget.detect()


def current_limits() -> Limits:
    """The declared limits, with the per-tag caps of the memory-budget block applied."""
    limits = Limits.load()
    block = _budget_block()
    if block is not None and block.tag_caps:
        return limits.with_caps(block.tag_caps, "memory-budget block")
    return limits


def planned_limits(limits: Limits | None = None, budget: Budget | None = None) -> dict[str, int]:
    """Every global concurrency limit headroom needs, by name, with its size."""
    limits = limits or current_limits()
    budget = budget or current_budget()
    plan = {f"tag:{tag}": spec.slots for tag, spec in limits.tags.items()}
    plan[memory_limit_name()] = limits.host_limit_mb(budget)
    return plan


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
    due (see headroom.attempts). Top level, so a task pickled for a Dask worker names it."""
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
        with _admitted(spec, cap):
            attempt.started = time.time()
            value, attempt.peak_mb = _run_body(spec, kwargs, cap, size, input_size)
    except BaseException as exc:
        attempt.outcome = failed_outcome(exc, spec.transient)
        if isinstance(exc, OutOfMemory):
            attempt.peak_mb = exc.peak_mb
            _tag_flow_run(run.flow_run_id, FLOW_TAG_OOM)
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
    return min(limits.cap_mb(tag, budget), _server_host_limit(limits, budget)), budget


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
        _tag_flow_run(run.flow_run_id, FLOW_TAG_FLOOR)
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


@contextlib.contextmanager
def _admitted(spec: BudgetedSpec, cap: float):
    """Admission: this process's cores for a CPU-bound body, then ``cap`` MiB of the host's
    memory limit (a lease, so a lost host's memory comes back)."""
    with (
        cpu_slots(spec.threads),
        leases.held(memory_limit_name(), max(1, math.ceil(cap)), MEMORY_LEASE_S),
    ):
        yield


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
    _publish_attempts(spec, log.rows())
    _open_logs.settle(log)


_cpu_lock = threading.Condition()
_cpu_busy = [0]


@contextlib.contextmanager
def cpu_slots(threads: int | None):
    """Hold ``threads`` of this process's cores (all of them at most) for a CPU-bound body;
    a no-op for ``None``. A body that never waits on I/O gains nothing from running beside
    more of its kind than there are cores, and pays for it in CPU time per item."""
    if not threads:
        yield
        return
    from headroom.budget import usable_cores

    cores = usable_cores()
    want = min(threads, cores)
    with _cpu_lock:
        _cpu_lock.wait_for(lambda: _cpu_busy[0] + want <= cores)
        _cpu_busy[0] += want
    try:
        yield
    finally:
        with _cpu_lock:
            _cpu_busy[0] -= want
            _cpu_lock.notify_all()


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


def _publish_attempts(spec: BudgetedSpec, rows: list[dict[str, Any]]) -> None:
    """Publish the run's attempts table from a background thread, in this task's context: the
    request is then off the path between the body's end and the next task."""
    import contextvars

    description = f"{spec.name}: attempts (tag {spec.tag})"
    key = attempts_key(spec.name)
    if _in_dask_worker():  # no flow-end flush reaches a worker's queue: publish now
        _create_table(rows, key, description)
        return
    try:
        _artifacts.submit(contextvars.copy_context().run, _create_table, rows, key, description)
    except RuntimeError:  # the interpreter is shutting down: no thread to hand it to
        _create_table(rows, key, description)


def _in_dask_worker() -> bool:
    import sys

    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def _create_table(rows: list[dict[str, Any]], key: str, description: str) -> None:
    from prefect.artifacts import create_table_artifact

    try:
        create_table_artifact(rows, key=key, description=description)
    except Exception:  # an artifact must never fail the work
        pass


def flush_artifacts(timeout_s: float = 30.0) -> None:
    """Wait until every attempts table asked for so far is published (at a flow's end; at exit
    the executor publishes what is queued before the interpreter goes)."""
    with contextlib.suppress(Exception):  # the interpreter is shutting down, or it took long
        _artifacts.submit(lambda: None).result(timeout_s)


def _new_artifacts_executor() -> None:
    """In a forked child the parent's publishing thread does not exist: a new executor."""
    global _artifacts
    _artifacts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headroom-artifacts")


os.register_at_fork(after_in_child=_new_artifacts_executor)


def _server_host_limit(limits: Limits, budget: Budget) -> float:
    """The size of memory-mb:<host> on the server (cached), or a clear error if missing."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    name = memory_limit_name()
    cached = _host_limit_cache.get(name)
    if cached and time.monotonic() - cached[0] < _LIMIT_CACHE_S:
        return float(cached[1])
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            raise TerminalError(
                f"the memory limit {name!r} does not exist on this Prefect server: {setup_hint()}"
            ) from None
    _host_limit_cache[name] = (time.monotonic(), limit)
    return float(limit)


def _tag_flow_run(flow_run_id: str | None, tag: str) -> None:
    """Mark a flow run so repeated OOMs or a reached floor show at a glance in the UI."""
    if not flow_run_id:
        return
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(flow_run_id))
            if tag not in run.tags:
                client.update_flow_run(UUID(flow_run_id), tags=[*run.tags, tag])
    except Exception:
        pass


def _import(module_name: str, qualname: str) -> Callable[..., Any]:
    import importlib

    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


# ---------------------------------------------------------------------------------------------
# Bounded maps


@dataclass
class Outcome:
    """One mapped item: its arguments and either its value or its error."""

    item: dict[str, Any]
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def map_bounded(
    task: Any,
    items: Iterable[dict[str, Any]],
    *,
    max_workers: int,
    chunk_scale: float | None = 1.0,
    progress: bool = True,
) -> list[Outcome]:
    """Run ``task`` once per item with at most ``max_workers`` submitted at once.

    Tag limits stay the global cap; this keeps a run's own slots busy without flooding the
    server (Prefect 3.8 hands tag slots over slowly). Never raises for an item: each
    :class:`Outcome` carries its value or its error.
    """
    from prefect.artifacts import create_progress_artifact
    from prefect.futures import as_completed

    pending = list(items)
    outcomes = [Outcome(item) for item in pending]
    running: dict[Any, int] = {}
    following = 0
    finished = 0
    progress_id: UUID | None = None
    if progress and pending:
        try:
            progress_id = create_progress_artifact(  # type: ignore[assignment]
                0.0, description=f"{task.name}: items done"
            )
        except Exception:
            progress_id = None
    reported = 0
    while following < len(pending) or running:
        while following < len(pending) and len(running) < max_workers:
            extra = {} if chunk_scale is None else {"chunk_scale": chunk_scale}
            running[task.submit(**pending[following], **extra)] = following
            following += 1
        # Progress is reported after the next item is on its way, not before: a freed slot
        # never waits for an API call.
        if progress_id is not None and reported < finished:
            progress_id = _report_progress(progress_id, finished, len(pending))
            reported = finished
        future = next(as_completed(list(running)))
        index = running.pop(future)
        try:
            # The future's own result: with persistence off the server holds no data.
            outcomes[index].value = future.result()
        except Exception as error:  # noqa: BLE001 - one item's failure is its outcome
            outcomes[index].error = error
        finished += 1
    if progress_id is not None:
        _report_progress(progress_id, finished, len(pending))
    return outcomes


def _report_progress(progress_id: UUID, finished: int, total: int) -> UUID | None:
    """Update the progress artifact; None (stop reporting) when the server refuses."""
    from prefect.artifacts import update_progress_artifact

    try:
        update_progress_artifact(progress_id, 100.0 * finished / total)
    except Exception:
        return None
    return progress_id


@dataclass
class ItemFailures(Exception):
    """Some mapped items failed; the others finished. Names each failed item and why."""

    what: str
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{len(self.failures)} {self.what} failed:"]
        lines += [f"  {name}: {reason}" for name, reason in self.failures]
        return "\n".join(lines)


def raise_failures(outcomes: list[Outcome], what: str, name_of: Callable[[dict], str]) -> None:
    """After the good items are done, raise one error naming every failed item; an output
    that could not be written is raised alone, once (every item met the same fault)."""
    raise_output_fault(outcomes)
    failed = [
        (name_of(o.item), f"{type(o.error).__name__}: {o.error}")
        for o in outcomes
        if o.error is not None
    ]
    if failed:
        raise ItemFailures(what, failed)


def raise_output_fault(outcomes: Iterable[Outcome]) -> None:
    """Raise the first :class:`OutputUnavailable` among ``outcomes``, if any."""
    for outcome in outcomes:
        if isinstance(outcome.error, OutputUnavailable):
            raise outcome.error


def retry_unless_terminal(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` of a plain task: retry a failure unless retrying cannot fix it
    (bad input, an output that cannot be written)."""
    error = getattr(state, "data", None)
    return not (isinstance(error, BaseException) and is_terminal(error))


# ---------------------------------------------------------------------------------------------
# Flow hooks


def memory_report_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """Publish the flow run's memory timeline against the budget as a markdown artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    flush_artifacts()  # the tasks' attempts tables first, before the run is reported done
    try:
        limits = current_limits()
        budget = current_budget()
        markdown = memory_report(
            str(flow_run.id), flow.name, budget.mb, limits.host_limit_mb(budget)
        )
        if markdown is None:
            return
        with get_client(sync_client=True) as client:
            client.create_artifact(
                ArtifactCreate(
                    type="markdown",
                    key="memory-report",
                    data=markdown,
                    description=f"memory of {flow.name} against the budget",
                    flow_run_id=flow_run.id,
                )
            )
    except Exception as exc:  # a report must never change the run's outcome
        import logging

        logging.getLogger(__name__).warning("memory report failed: %s", exc)


def crash_rerun_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """When a deployment's flow-run process is killed, run it again with chunk_scale halved.

    The rule is headroom.reruns' (shared with the lost-host automation): at most MAX_RERUNS in
    a lineage, and one re-run per lost run whoever reports the loss (an idempotency key).
    """
    import logging

    from prefect.deployments import run_deployment

    from headroom.reruns import EXHAUSTED, RERUN_KEY, rerun_parameters

    log = logging.getLogger(__name__)
    if not getattr(flow_run, "deployment_id", None):
        log.warning("flow run %s crashed outside a deployment: not re-run", flow_run.name)
        return
    parameters = rerun_parameters(dict(flow_run.parameters or {}))
    if parameters is None:
        scale = float((flow_run.parameters or {}).get("chunk_scale", 1.0))
        log.error("flow run %s crashed: %s", flow_run.name, EXHAUSTED.format(scale=scale))
        return
    done = max(
        [int(t.rsplit("-", 1)[1]) for t in flow_run.tags if t.startswith(RERUN_TAG + "-")] or [0]
    )
    scale = parameters["chunk_scale"]
    tags = [t for t in flow_run.tags if not t.startswith(RERUN_TAG)]
    reason = (state.message or "crashed").splitlines()[0][:80]
    new_run: Any = run_deployment(
        flow_run.deployment_id,
        parameters=parameters,
        flow_run_name=f"{flow_run.name}-rerun{done + 1}-scale{scale:g}",
        tags=[*tags, f"{RERUN_TAG}-{done + 1}", "headroom:after-crash"],
        idempotency_key=RERUN_KEY.format(flow_run_id=flow_run.id),
        timeout=0,
        as_subflow=False,
    )
    log.warning(
        "flow run %s crashed (%s): started %s with chunk_scale %.3g",
        flow_run.name,
        reason,
        new_run.name,
        scale,
    )


def note_process_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """Record which process on which host runs this flow run (headroom.runs), and make a local
    server ready for it (headroom.local_server: missing limits, dead runs, stranded slots)."""
    import logging

    from prefect.client.orchestration import get_client

    from headroom import local_server, runs, waiting

    try:
        runs.record_process(str(flow_run.id))
    except OSError as exc:  # a record must never stop the run
        logging.getLogger(__name__).warning("could not record the run's process: %s", exc)
    with get_client(sync_client=True) as client:
        local_server.prepare(client, str(flow_run.id), planned_limits())
    waiting.watch_tag_waits(flow_run)


def forget_process_hook(flow: Any, flow_run: Any, state: Any) -> None:
    from headroom import runs, waiting

    waiting.stop_watching(flow_run)
    with contextlib.suppress(OSError):
        runs.forget_process(str(flow_run.id))


FLOW_HOOKS: dict[str, list[Callable[..., None]]] = {
    "on_running": [note_process_hook],
    "on_completion": [memory_report_hook, forget_process_hook],
    "on_failure": [memory_report_hook, forget_process_hook],
    "on_crashed": [crash_rerun_hook, memory_report_hook, forget_process_hook],
    "on_cancellation": [forget_process_hook],
}


# On the embedded default, the temporary server starts now, with headroom's app (before any
# client of this process starts Prefect's own).
temporary_server.start_early()
