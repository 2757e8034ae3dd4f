"""Every deployment in prefect.yaml loads, and its parameters validate against its flow."""

from __future__ import annotations

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from deployments.serve import PREFECT_YAML, ROOT, load_deployment_specs

SPECS = load_deployment_specs()


def test_prefect_yaml_has_no_credentials():
    text = PREFECT_YAML.read_text().lower()
    for word in ("password", "secret_key", "access_key", "api_key:"):
        assert word not in text


def test_every_deployment_uses_the_declared_work_pool():
    document = yaml.safe_load(PREFECT_YAML.read_text())
    pool = document["definitions"]["work_pools"]["process"]["name"]
    assert SPECS and all(spec["work_pool"]["name"] == pool for spec in SPECS)


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_deployment_loads_and_parameters_validate(spec):
    flow = load_flow_from_entrypoint(str(ROOT / spec["entrypoint"]))
    parameters = flow.validate_parameters(spec.get("parameters") or {})
    assert "chunk_scale" in flow.parameters.properties, "every flow takes chunk_scale"
    assert 0 < parameters.get("chunk_scale", 1.0) <= 1


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_bad_chunk_scale_is_refused_before_any_work(spec):
    from prefect.exceptions import ParameterTypeError

    flow = load_flow_from_entrypoint(str(ROOT / spec["entrypoint"]))
    with pytest.raises(ParameterTypeError, match="chunk_scale"):
        flow.validate_parameters({**(spec.get("parameters") or {}), "chunk_scale": 1.5})


def test_flow_modules_keep_real_annotations():
    # A flow run loads its module from the entrypoint path under a name pydantic cannot find in
    # sys.modules, so string annotations (PEP 563) of flow parameters cannot be resolved there
    # ("...Model is not fully defined") and every served or deployed run fails at once.
    offenders = []
    for spec in SPECS:
        source = (ROOT / spec["entrypoint"].split(":")[0]).read_text()
        if "from __future__ import annotations" in source:
            offenders.append(spec["entrypoint"])
    assert not offenders, f"drop `from __future__ import annotations` in {offenders}"


def test_prefect_yaml_and_the_workload_registry_name_the_same_flows():
    from flows import WORKLOADS

    deployed = {spec["entrypoint"] for spec in SPECS}
    registered = {w.entrypoint for w in WORKLOADS}
    assert deployed == registered
    for workload in WORKLOADS:
        assert workload.entrypoint.startswith(f"flows/{workload.name}/flow.py:")
