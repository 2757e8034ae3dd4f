"""Flow-run hooks: the memory report, the re-run of a crashed run, and the record of which
process runs a flow run (so a dead one is told apart)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from uuid import UUID

from headroom.prefect.admission import current_budget, current_limits, planned_limits
from headroom.prefect.artifacts import flush_artifacts
from headroom.prefect.report import memory_report

FLOW_TAG_OOM = "headroom:oom"


FLOW_TAG_FLOOR = "headroom:chunk-floor"


RERUN_TAG = "headroom:rerun"


def tag_flow_run(flow_run_id: str | None, tag: str) -> None:
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

    The rule is headroom.prefect.reruns' (shared with the lost-host automation): at most MAX_RERUNS
    in
    a lineage, and one re-run per lost run whoever reports the loss (an idempotency key).
    """
    import logging

    from prefect.deployments import run_deployment

    from headroom.prefect.reruns import EXHAUSTED, RERUN_KEY, rerun_parameters

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
    """Record which process on which host runs this flow run (headroom.prefect.runs), and make a
    local
    server ready for it (headroom.prefect.local_server: missing limits, dead runs, stranded
    slots)."""
    import logging

    from prefect.client.orchestration import get_client

    from headroom.prefect import local_server, runs, waiting

    try:
        runs.record_process(str(flow_run.id))
    except OSError as exc:  # a record must never stop the run
        logging.getLogger(__name__).warning("could not record the run's process: %s", exc)
    with get_client(sync_client=True) as client:
        local_server.prepare(client, str(flow_run.id), planned_limits())
    waiting.watch_tag_waits(flow_run)


def forget_process_hook(flow: Any, flow_run: Any, state: Any) -> None:
    from headroom.prefect import runs, waiting

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
