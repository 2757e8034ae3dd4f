"""The re-run rule is one rule: the hook's Python and the automation's Jinja template (rendered
by Prefect's own hydration, as the server renders it) give the same parameters."""

from __future__ import annotations

import copy

import pytest

from headroom.prefect.reruns import MAX_RERUNS, RERUN_PARAMETERS, rerun_parameters


def _render(parameters: dict) -> dict:
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    class FlowRun:  # what the server puts in the template context: the lost run
        pass

    lost = FlowRun()
    lost.parameters = parameters  # type: ignore[attr-defined]
    context = HydrationContext(
        raise_on_error=True, render_jinja=True, jinja_context={"flow_run": lost}
    )
    return hydrate(copy.deepcopy(RERUN_PARAMETERS), context)


@pytest.mark.parametrize(
    "parameters",
    [
        {"chunk_scale": 1.0, "out": 'data/it\'s "quoted"', "rows": 5},
        {"rows": 3},  # no chunk_scale: the flow's default, 1
        {"chunk_scale": 0.25, "nested": {"a": [1, 2]}},
    ],
)
def test_template_and_hook_agree(parameters):
    expected = rerun_parameters(parameters)
    assert expected is not None and expected["chunk_scale"] < parameters.get("chunk_scale", 1.0)
    assert _render(parameters) == expected


def test_a_lineage_ends_after_max_reruns_on_both_paths():
    from prefect.utilities.schema_tools.hydration import InvalidJSON

    parameters = {"chunk_scale": 1.0}
    chain = []
    while (following := rerun_parameters(parameters)) is not None:
        assert _render(parameters) == following
        chain.append(following["chunk_scale"])
        parameters = following
    assert len(chain) == MAX_RERUNS == 3
    with pytest.raises(InvalidJSON):  # the server then refuses to create a run
        _render(parameters)
