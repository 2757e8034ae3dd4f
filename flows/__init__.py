"""The workloads: one package each, and the one registry the demo, the benchmarks and the tests
read (prefect.yaml's deployments are checked against it).

Importing any workload names the project's limits declaration to headroom, so a script or a
worker that starts outside the checkout finds deployments/limits.toml.
"""

from pathlib import Path
from typing import NamedTuple

from headroom.limits import use_declaration

use_declaration(Path(__file__).resolve().parent.parent / "deployments" / "limits.toml")


class Workload(NamedTuple):
    """A workload: its name (package, tag prefix), its flow's entrypoint, its flow module."""

    name: str
    entrypoint: str

    @property
    def module(self) -> str:
        """The flow module, which also holds ``demo(workdir)``."""
        return self.entrypoint.split(":")[0].removesuffix(".py").replace("/", ".")


# In dependency order: fraud_synth's dataset feeds stream_stats and ml_pipeline.
WORKLOADS = (
    Workload("oom_drill", "flows/oom_drill/flow.py:oom_drill"),
    Workload("fraud_synth", "flows/fraud_synth/flow.py:generate_fraud_dataset"),
    Workload("mitma_od", "flows/mitma_od/flow.py:ingest_mitma_od"),
    Workload("iso_lmp", "flows/iso_lmp/flow.py:convert_iso_lmp"),
    Workload("stream_stats", "flows/stream_stats/flow.py:stream_stats"),
    Workload("ml_pipeline", "flows/ml_pipeline/flow.py:train_fraud_model"),
)
