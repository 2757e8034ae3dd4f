"""Generate a synthetic card-fraud dataset of any size at flat memory (Prefect flow).

Phase 1 writes the reference tables (customers, devices, merchants); phase 2 writes the
transaction files in parallel as budgeted tasks (tag ``fraud-gen``), each streaming row
groups into a temporary file that is published only when complete. Finished files leave
their manifest entry behind, so a re-run (or a crash re-run) skips them; the manifest is
written last and lists only complete files. The generation itself lives in
``flows/fraud_synth/generate.py`` (no prefect).
"""

import math
import time
from datetime import date
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.common.flow import run_if_main
from flows.common.params import bad_parameter, signature_from
from flows.fraud_synth import generate as gen
from flows.fraud_synth.params import Compression, FraudSynthParams
from flows.fraud_synth.spec import BYTES_PER_TRANSACTION
from headroom import BadInput, Chunking
from headroom.prefect import (
    FLOW_HOOKS,
    ChunkScale,
    MaxWorkers,
    budgeted_task,
    map_bounded,
    raise_failures,
)
from headroom.storage import Storage

# A buffered row holds a block's columns and its Arrow batch, the writer's page buffers and
# the row group being assembled; bytes_per_row over-estimates that to keep a margin. The
# ceiling is two blocks a row group: throughput does not grow with bigger row groups, while
# each writer's peak does (bench/bench_fraud_synth.py measures the writer).
write_part = budgeted_task(
    gen.write_transaction_file,
    tag="fraud-gen",
    chunk=Chunking(
        "rows_per_chunk", default=131_072, floor=4_096, bytes_per_row=300.0, ceiling=131_072
    ),
    input_bytes=lambda kw: gen.DatasetSpec.from_dict(kw["spec"]).rows_in_file(kw["index"]) * 64,
    oom_retries=4,
    transient=(ConnectionError,),
    retries=1,
    name="write-transaction-file",
)
write_reference = budgeted_task(
    gen.write_reference_tables, tag="fraud-gen", oom_retries=1, name="write-reference-tables"
)

REFERENCE_MARK = "_parts/reference.json"


def resolve_out(out: str) -> Storage:
    """``out`` as a Storage: a local path, ``s3://bucket/prefix`` or a storage block's name.

    The one place where ``out`` is interpreted; unknown block names fail here, naming ``out``.
    """
    try:
        return gen.open_out(out)
    except BadInput:
        raise
    except ValueError as exc:
        raise bad_parameter("out", f"{out!r}: {exc}") from exc


def _probe(storage: Storage) -> None:
    """Fail early and clearly when the storage cannot be reached or written."""
    try:
        storage.makedirs()
        storage.exists("manifest.json")
    except OSError as exc:
        raise ConnectionError(f"parameter out: cannot reach {storage.url}: {exc}") from exc


@flow(name="generate-fraud-dataset", **FLOW_HOOKS)
@signature_from(FraudSynthParams)
def generate_fraud_dataset(
    size: str | None = "200MB",
    transactions: int | None = None,
    start: date = date(2024, 1, 1),
    end: date = date(2024, 3, 31),
    seed: int = 0,
    file_size: str = "128MB",
    out: str = "data/fraud",
    compression: Compression = "zstd",
    fraud_rate: float = 0.008,
    customers: int | None = None,
    extra_bytes_per_row: int = 0,
    max_workers: MaxWorkers = 2,
    chunk_scale: ChunkScale = 1.0,
) -> dict[str, Any]:
    """Write a fraud dataset (reference tables, transaction files, manifest) to ``out``."""
    params = FraudSynthParams.from_call(locals())
    spec = params.dataset_spec()
    started = time.monotonic()
    storage = resolve_out(params.out)
    done = _prepare(storage, spec)
    reference = _write_reference(storage, spec, params.out)
    outcomes = map_bounded(
        write_part,
        [
            {
                "out": params.out,
                "spec": spec.to_dict(),
                "index": i,
                "extra_bytes_per_row": params.extra_bytes_per_row,
            }
            for i in range(spec.files)
            if i not in done
        ],
        max_workers=max_workers,
        chunk_scale=chunk_scale,
    )
    # Writers killed for memory leave temporaries; every writer of this run has ended now.
    storage.remove_temporaries("transactions")
    entries = list(done.values()) + [o.value for o in outcomes if o.ok]
    manifest = gen.build_manifest(spec, entries, reference["rows"])
    storage.write_json("manifest.json", manifest)
    written = sum(o.ok for o in outcomes)
    summary = _summarise(storage, manifest, written, len(done), time.monotonic() - started)
    raise_failures(outcomes, "transaction files", lambda item: gen.part_path(item["index"]))
    return summary


def _prepare(storage: Storage, spec: gen.DatasetSpec) -> dict[int, dict[str, Any]]:
    """Check that ``out`` can take this dataset and remove what killed writers left; the
    files already complete (a re-run skips them)."""
    logger = get_run_logger()
    _probe(storage)
    existing = storage.read_json("manifest.json")
    if existing and existing.get("fingerprint") != gen.fingerprint(spec):
        raise bad_parameter(
            "out",
            f"{storage.url} already holds a different dataset (seed {existing.get('seed')}, "
            f"{existing.get('transactions')} transactions): use another out or remove it",
        )
    removed = storage.remove_temporaries()
    if removed:
        logger.info("removed %d temporary files of killed writers", len(removed))
    done = gen.completed_entries(storage, spec)
    todo = [i for i in range(spec.files) if i not in done]
    per_row = BYTES_PER_TRANSACTION[spec.compression]
    needed = sum(spec.rows_in_file(i) for i in todo) * per_row * 1.1 + spec.customers * 200
    gen.check_free_space(storage, math.ceil(needed))
    logger.info(
        "%s: %d transactions in %d files (%d done already), %d customers",
        storage.url,
        spec.transactions,
        spec.files,
        len(done),
        spec.customers,
    )
    return done


def _write_reference(storage: Storage, spec: gen.DatasetSpec, out: str) -> dict[str, Any]:
    """The reference tables, written unless this dataset's are there already.

    They are written alone, before any transaction file: their writer holds every customer
    column and peaks above a transaction writer, so alongside one it would set the run's peak,
    and a failure here stops the run before the transactions start.
    """
    reference = storage.read_json(REFERENCE_MARK)
    if not reference or reference.get("fingerprint") != gen.fingerprint(spec):
        rows = write_reference.submit(out=out, spec=spec.to_dict()).result()
        reference = {"fingerprint": gen.fingerprint(spec), "rows": rows}
        storage.write_json(REFERENCE_MARK, reference)
    return reference


def _summarise(
    storage: Storage,
    manifest: dict[str, Any],
    written: int,
    skipped: int,
    seconds: float,
) -> dict[str, Any]:
    """The run's summary (the flow's return value), logged in one line."""
    summary = {
        "out": storage.url,
        "transactions": manifest["rows"],
        "files": len(manifest["files"]),
        "written": written,
        "skipped": skipped,
        "bytes": manifest["bytes"],
        "fraud": manifest["fraud"],
        "complete": manifest["complete"],
        "seconds": round(seconds, 2),
    }
    get_run_logger().info(
        "%d transactions in %d files (%.1f MB) in %.1f s; fraud %s",
        summary["transactions"],
        summary["files"],
        summary["bytes"] / 1e6,
        seconds,
        manifest["fraud"],
    )
    return summary


def demo(workdir: Path) -> str:
    """Generate a small dataset under ``workdir`` with the flow; one line with its figures."""
    started = time.monotonic()
    summary = generate_fraud_dataset(
        size="6MB", file_size="3MB", start=date(2024, 1, 1), end=date(2024, 1, 31),
        out=str(Path(workdir) / "fraud"),
    )  # fmt: skip
    return (
        f"fraud_synth: {summary['transactions']:,} transactions, {summary['files']} files, "
        f"{summary['bytes'] / 1e6:.1f} MB, {sum(summary['fraud'].values()):,} fraud rows "
        f"in {time.monotonic() - started:.1f} s"
    )


run_if_main(__name__, generate_fraud_dataset, demo)
