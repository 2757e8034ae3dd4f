"""A user's script: each workload's flow called from Python, on small data, nothing set up.

    python -m tests.deployments.python_api_script WORKDIR

Run by tests/deployments/test_python_api.py on a fresh PREFECT_HOME (the embedded default:
each call's temporary server on SQLite there), without ``python -m deployments.setup``. Prints
one ``RESULT {json}`` line of what each call returned.
"""

import json
import sys
from datetime import date
from pathlib import Path

from flows.fraud_synth.flow import generate_fraud_dataset
from flows.iso_lmp import samples as iso_samples
from flows.iso_lmp.flow import convert_iso_lmp
from flows.mitma_od import samples as mitma_od_samples
from flows.mitma_od.flow import ingest_mitma_od
from flows.ml_pipeline.flow import train_fraud_model
from flows.stream_stats.flow import stream_stats


def main(workdir: Path) -> dict:
    fraud = generate_fraud_dataset(
        transactions=60_000,
        file_size="1MB",
        out=str(workdir / "fraud"),
        start=date(2024, 1, 1),
        end=date(2024, 2, 29),
        fraud_rate=0.02,
        seed=7,
    )
    mirror = workdir / "mitma-mirror"
    mitma_od_samples.write_samples(
        mirror, date(2023, 3, 1), 2, zone_types=["distritos"], rows_per_day=5_000, seed=3
    )
    mitma = ingest_mitma_od(
        start_date=date(2023, 3, 1),
        end_date=date(2023, 3, 2),
        zone_type="distritos",
        source=str(mirror),
        database=str(workdir / "mitma.duckdb"),
    )
    raw = workdir / "iso-raw"
    iso_samples.write_samples(raw, isos=["MISO"], nodes=3)
    iso = convert_iso_lmp(
        iso="MISO",
        start=min(iso_samples.SAMPLE_DAYS),
        end=max(iso_samples.SAMPLE_DAYS),
        raw=str(raw),
        out=str(workdir / "iso-dataset"),
    )
    stream = stream_stats(
        source=str(workdir / "fraud"),
        sink=str(workdir / "stream.duckdb"),
        window="1h",
        max_events=20_000,
        max_duration="2min",
        backend="cpu",
    )
    model = train_fraud_model(
        dataset=str(workdir / "fraud"), out=str(workdir / "models"), max_iter=20, seed=1
    )
    return {
        "fraud_synth": fraud["transactions"],
        "mitma_od": mitma["rows"],
        "iso_lmp": iso["rows_published"],
        "stream_stats": stream["events"],
        "ml_pipeline": model["version"],
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))), flush=True)
