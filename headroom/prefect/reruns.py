"""One rule for re-running a lost flow run, whichever path notices the loss.

Two paths notice that a deployment's flow run was lost: the worker (or ``serve()``) that saw
its process die runs the flow's on_crashed hook, and the server's automation marks Crashed a
run whose heartbeats stopped (its host was lost). Both re-run it with ``chunk_scale`` halved,
so a lineage of re-runs is visible in its parameters: 1 -> 0.5 -> 0.25 -> 0.125. A crashed run
whose ``chunk_scale`` is already at or below ``MIN_RERUN_SCALE`` is not re-run: at most
``MAX_RERUNS`` re-runs for a run that started at the default scale, across both paths.

The rule is written twice: here for the hook, and as the Jinja template the server renders for
the automation (it has no Python of ours). A test renders the template with Prefect's own
renderer against the function below.
"""

from __future__ import annotations

from typing import Any

MAX_RERUNS = 3
MIN_RERUN_SCALE = 0.5**MAX_RERUNS
# Idempotency key of a lost run's re-run: a second report of the same loss creates nothing.
RERUN_KEY = "headroom-rerun-of-{flow_run_id}"
EXHAUSTED = "headroom: not re-run, chunk_scale {scale:g} is at the floor of its lineage"


def rerun_parameters(parameters: dict[str, Any]) -> dict[str, Any] | None:
    """The parameters of a lost run's re-run, or None when its lineage is exhausted."""
    scale = float(parameters.get("chunk_scale", 1.0))
    if scale <= MIN_RERUN_SCALE:
        return None
    return {**parameters, "chunk_scale": scale / 2}


# The same rule for the server: a JSON value rendered from the lost flow run. Past the floor it
# renders a sentence that is not JSON, so the server refuses to create the run and records
# the action as failed with that sentence (a proactive automation has no other "do nothing").
RERUN_PARAMETERS_TEMPLATE = (
    "{% set scale = (flow_run.parameters.get('chunk_scale', 1.0)) | float %}"
    f"{{% if scale > {MIN_RERUN_SCALE!r} %}}"
    "{{ dict(flow_run.parameters, chunk_scale=scale / 2) | tojson }}"
    "{% else %}" + EXHAUSTED.replace("{scale:g}", "{{ scale }}") + "{% endif %}"
)
RERUN_PARAMETERS = {
    "__prefect_kind": "json",
    "value": {"__prefect_kind": "jinja", "template": RERUN_PARAMETERS_TEMPLATE},
}
