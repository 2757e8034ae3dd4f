"""The fraud dataset as the model pipeline sees it: manifest, fingerprint, health check, and a
local copy of a remote dataset. No prefect here."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from flows.ml_pipeline.schema import TRANSACTION_COLUMNS, local_path, to_ms
from headroom.errors import BadInput


def read_manifest(dataset: str) -> dict[str, Any]:
    """The dataset's manifest.json, or BadInput naming what is missing."""
    from headroom.storage import open_storage

    if "://" not in dataset and not os.path.isdir(dataset):
        raise BadInput(f"dataset: {dataset!r} is not a directory")
    storage = open_storage(dataset)
    try:
        manifest = storage.read_json("manifest.json")
    except OSError as exc:
        if "://" not in dataset:
            raise
        raise ConnectionError(f"parameter dataset: cannot reach {storage.url}: {exc}") from exc
    if manifest is None:
        raise BadInput(f"dataset {dataset}: manifest.json is missing (not a fraud_synth output?)")
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise BadInput(f"dataset {dataset}: manifest.json lists no transaction files")
    for position, entry in enumerate(files):
        missing = [k for k in ("path", "rows", "bytes", "checksum") if k not in entry]
        if missing:
            raise BadInput(
                f"dataset {dataset}: manifest.json files[{position}] lacks {', '.join(missing)}"
            )
        storage.path(str(entry["path"]))  # refuses a path that leaves the dataset
    return manifest


def ordered_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's file entries in index order (= event-time order)."""
    return sorted(manifest["files"], key=lambda f: (f.get("index", 0), f["path"]))


def dataset_fingerprint(manifest: dict[str, Any]) -> str:
    """A hash of the dataset's content as the manifest records it: names, sizes, checksums."""
    entries = [
        [f["path"], int(f["rows"]), int(f["bytes"]), str(f["checksum"])]
        for f in ordered_files(manifest)
    ]
    document = {"schema_version": manifest.get("schema_version"), "files": entries}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def _type_family(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        return _type_family(arrow_type.value_type)
    if pa.types.is_int64(arrow_type):
        return "int64"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    return str(arrow_type)


def schema_problems(schema: Any, where: str) -> list[str]:
    """What is missing or mistyped in one transaction file's Arrow schema."""
    problems = []
    names = set(schema.names)
    for column, family in TRANSACTION_COLUMNS.items():
        if column not in names:
            problems.append(f"{where}: column {column!r} is missing")
            continue
        found = _type_family(schema.field(column).type)
        if found != family:
            problems.append(
                f"{where}: column {column!r} is {schema.field(column).type}, expected {family}"
            )
    return problems


def check_dataset(dataset: str, min_fraud_rows: int = 50) -> dict[str, Any]:
    """Health check: manifest, every listed file present at its size with the expected schema,
    enough fraud rows. Returns a small report with the fingerprint, or one BadInput naming every
    problem."""
    import pyarrow.parquet as pq

    from headroom.storage import open_storage

    manifest = read_manifest(dataset)
    storage = open_storage(dataset)
    files = ordered_files(manifest)
    problems: list[str] = []
    for entry in files:
        size = storage.size(entry["path"])
        if size is None:
            problems.append(f"{entry['path']}: listed in manifest.json but missing")
            continue
        if size != int(entry["bytes"]):
            problems.append(f"{entry['path']}: {size} bytes, manifest.json says {entry['bytes']}")
            continue
        try:
            schema = pq.read_schema(storage.path(entry["path"]), filesystem=storage.filesystem)
        except Exception as exc:  # an unreadable footer is a problem of that file
            problems.append(f"{entry['path']}: not readable as Parquet ({exc})")
            continue
        problems += schema_problems(schema, entry["path"])
    fraud_by_scenario: dict[str, int] = {}
    for entry in manifest["files"]:
        for scenario, count in (entry.get("fraud") or {}).items():
            fraud_by_scenario[scenario] = fraud_by_scenario.get(scenario, 0) + int(count)
    fraud_rows = sum(fraud_by_scenario.values())
    if fraud_rows < min_fraud_rows:
        problems.append(
            f"only {fraud_rows} fraud rows in the dataset, min_fraud_rows={min_fraud_rows} needed"
        )
    if problems:
        raise BadInput(
            f"dataset {dataset} failed its health check ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
        )
    rows = sum(int(f["rows"]) for f in files)
    min_ts = [to_ms(f["min_ts"]) for f in files if f.get("min_ts") is not None]
    max_ts = [to_ms(f["max_ts"]) for f in files if f.get("max_ts") is not None]
    return {
        "dataset": dataset,
        "fingerprint": dataset_fingerprint(manifest),
        "files": len(files),
        "rows": rows,
        "bytes": sum(int(f["bytes"]) for f in files),
        "fraud_rows": fraud_rows,
        "fraud_by_scenario": dict(sorted(fraud_by_scenario.items())),
        "min_ts_ms": min(min_ts) if min_ts else to_ms(manifest["start"]),
        "max_ts_ms": max(max_ts) if max_ts else to_ms(manifest["end"]),
        "seed": manifest.get("seed"),
    }


def staged_dir(cache_root: str | Path, fingerprint: str) -> Path:
    """Where :func:`stage_dataset` copies a remote dataset of this fingerprint."""
    return Path(cache_root) / f"dataset-{fingerprint[:16]}"


def stage_dataset(dataset: str, fingerprint: str, cache_root: str) -> str:
    """A local directory holding the dataset: itself when local, else a verified copy of the
    files its manifest lists (S3), streamed to ``cache_root/<fingerprint>``."""
    from headroom.storage import open_storage

    local = local_path(dataset)
    if local is not None:
        return str(local)
    storage = open_storage(dataset)
    manifest = read_manifest(dataset)
    target = staged_dir(cache_root, fingerprint)
    for entry in ordered_files(manifest):
        local = target / entry["path"]
        if local.exists() and local.stat().st_size == int(entry["bytes"]):
            continue
        storage.get_file(entry["path"], local)
    open_storage(target).write_json("manifest.json", manifest)
    return str(target)
