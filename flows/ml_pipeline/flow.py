"""Train a fraud model on a fraud_synth dataset, passing references, never objects.

Health check (manifest, files, schema, enough fraud) -> features (DuckDB over the Parquet
files, out of core under the ``ml-features`` cap) -> train (HistGradientBoosting on a sample
sized to the ``ml-train`` cap) -> evaluate (PR-AUC, ROC-AUC, recall at an alert rate, per fraud
scenario) -> register (model, metrics, features, fingerprint, model card; published atomically).

Tasks hand each other file paths and small records. Each step is cached by its inputs, which
include the dataset's fingerprint (a hash of the manifest's file names, sizes and checksums),
and by the existence of its output: a resumed run reuses finished steps, a changed dataset or a
deleted output runs them again. Only these small JSON records go to Prefect's result storage.
"""

import hashlib
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE, CachePolicy

from flows.common.params import data_root, signature_from
from flows.ml_pipeline import dataset as ml_dataset
from flows.ml_pipeline import features as ml_features
from flows.ml_pipeline import model as ml_model
from flows.ml_pipeline import params as ml_params
from flows.ml_pipeline import registry as ml_registry
from flows.ml_pipeline import schema as ml_core
from headroom import Chunking
from headroom.prefect import FLOW_HOOKS, ChunkScale, budgeted_task

CACHED_RESULTS = {"persist_result": True, "result_serializer": "json"}


NOT_IN_KEY = frozenset({"chunk_scale", "dataset", "dataset_dir"})


def step_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """The cache key of a step: its name, the pipeline version and its inputs, where the data is
    known by its fingerprint, not its location, and ``chunk_scale`` (how, not what) is left out."""
    inputs = {k: v for k, v in parameters.items() if k not in NOT_IN_KEY}
    document = [context.task.name, ml_core.PIPELINE_VERSION, inputs]
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


STEP_CACHE = CachePolicy.from_cache_key_fn(step_cache_key)


def _registered(out: str, version: str) -> bool:
    from headroom.storage import open_storage

    return open_storage(out).exists(f"{ml_core.MODEL_NAME}/{version}/registration.json")


def _dataset_bytes(kwargs: dict[str, Any]) -> int | None:
    try:
        return sum(p.stat().st_size for p in Path(kwargs["dataset_dir"]).rglob("*.parquet"))
    except OSError:
        return None


@task(name="check-fraud-dataset", cache_policy=NO_CACHE, persist_result=False)
def check_dataset(dataset: str, min_fraud_rows: int) -> dict[str, Any]:
    """Health check: the dataset is present, has the expected schema and enough fraud rows."""
    return ml_dataset.check_dataset(dataset, min_fraud_rows)


@task(name="stage-fraud-dataset", cache_policy=STEP_CACHE, **CACHED_RESULTS)
def stage_dataset(dataset: str, fingerprint: str, cache_root: str) -> str:
    """A local copy of a remote dataset (DuckDB here reads local files only)."""
    return ml_dataset.stage_dataset(dataset, fingerprint, cache_root)


build_features = budgeted_task(
    ml_features.build_features_task,
    tag="ml-features",
    # Transactions per batch of whole files (each batch also reads 7 days of look-back).
    chunk=Chunking("rows_per_batch", default=4_000_000, floor=50_000, bytes_per_row=400.0),
    input_bytes=_dataset_bytes,
    name="build-fraud-features",
).with_options(cache_policy=STEP_CACHE, **CACHED_RESULTS)

train_model = budgeted_task(
    ml_model.train_model_task,
    tag="ml-train",
    # Rows sampled for the fit: the matrix, its binned copy and the booster's gradients.
    chunk=Chunking("rows_sampled", default=2_000_000, floor=20_000, bytes_per_row=800.0),
    name="train-fraud-model",
).with_options(cache_policy=STEP_CACHE, **CACHED_RESULTS)

evaluate_model = budgeted_task(
    ml_model.evaluate_model_task,
    tag="ml-train",
    chunk=Chunking("rows_per_batch", default=250_000, floor=10_000, bytes_per_row=1_500.0),
    name="evaluate-fraud-model",
).with_options(cache_policy=STEP_CACHE, **CACHED_RESULTS)


# Publishing runs in the flow process (small files); its cache entry skips a re-registration.
register_model = task(
    ml_registry.register_model,
    name="register-fraud-model",
    cache_policy=STEP_CACHE,
    **CACHED_RESULTS,
)


def _run(step: Any, states: dict[str, str], output_done: bool = True, **kwargs: Any) -> Any:
    """Call a task, note its final state's name (Completed, Cached) and return its value.

    A step whose output is gone (deleted scratch, a registry cleaned by hand) runs again and
    refreshes its cache entry instead of returning a path to nothing.
    """
    if not output_done:
        step = step.with_options(refresh_cache=True)
    state = step(**kwargs, return_state=True)
    states[step.name] = state.name
    return state.result()


@flow(name="train-fraud-model", **FLOW_HOOKS)
@signature_from(ml_params.TrainParams)
def train_fraud_model(
    dataset: str,
    out: str = "data/models",
    train_end: datetime | None = None,
    test_start: datetime | None = None,
    train_fraction: float = 0.7,
    learning_rate: float = 0.05,
    max_iter: int = 150,
    max_leaf_nodes: int = 31,
    min_samples_leaf: int = 5,
    l2_regularization: float = 0.0,
    alert_rate: float = 0.01,
    min_fraud_rows: int = 50,
    seed: int = 0,
    workdir: str | None = None,
    chunk_scale: ChunkScale = 1.0,
) -> dict[str, Any]:
    """Check a fraud_synth dataset, build features, train, evaluate and register a model."""
    params = ml_params.TrainParams.parse(
        data_root=data_root(),
        dataset=dataset,
        out=out,
        train_end=train_end,
        test_start=test_start,
        train_fraction=train_fraction,
        learning_rate=learning_rate,
        max_iter=max_iter,
        max_leaf_nodes=max_leaf_nodes,
        min_samples_leaf=min_samples_leaf,
        l2_regularization=l2_regularization,
        alert_rate=alert_rate,
        min_fraud_rows=min_fraud_rows,
        seed=seed,
        workdir=workdir,
        chunk_scale=chunk_scale,
    )
    logger = get_run_logger()
    started = time.monotonic()
    states: dict[str, str] = {}
    work = params.local_workdir()
    health = _run(
        check_dataset, states, dataset=params.dataset, min_fraud_rows=params.min_fraud_rows
    )
    fingerprint = health["fingerprint"]
    logger.info(
        "dataset %s: %s rows, %s fraud, fingerprint %s",
        params.dataset,
        f"{health['rows']:,}",
        f"{health['fraud_rows']:,}",
        fingerprint[:16],
    )
    train_end_ms, test_start_ms = ml_params.resolve_split(
        params, health["min_ts_ms"], health["max_ts_ms"]
    )
    split = {"train_end": ml_core.iso(train_end_ms), "test_start": ml_core.iso(test_start_ms)}
    local = ml_core.local_path(params.dataset)
    if local is not None:
        dataset_dir = str(local)
    else:
        dataset_dir = _run(
            stage_dataset,
            states,
            output_done=(ml_dataset.staged_dir(work, fingerprint) / "manifest.json").is_file(),
            dataset=params.dataset,
            fingerprint=fingerprint,
            cache_root=str(work),
        )

    model_params = params.model_params()
    version = ml_registry.model_version(fingerprint, model_params, split, params.seed)
    features_dir = str(work / f"features-{fingerprint[:16]}")
    model_path = str(work / f"model-{version}.pkl")
    metrics_path = str(work / f"metrics-{version}-{params.alert_rate:g}.json")
    features = _run(
        build_features,
        states,
        output_done=ml_features.features_complete(features_dir),
        dataset_dir=dataset_dir,
        features_dir=features_dir,
        fingerprint=fingerprint,
        chunk_scale=params.chunk_scale,
    )
    training = _run(
        train_model,
        states,
        output_done=Path(model_path).is_file(),
        features_dir=features["features_dir"],
        model_path=model_path,
        train_end_ms=train_end_ms,
        model_params=model_params,
        seed=params.seed,
        fingerprint=fingerprint,
        chunk_scale=params.chunk_scale,
    )
    metrics = _run(
        evaluate_model,
        states,
        output_done=Path(metrics_path).is_file(),
        features_dir=features["features_dir"],
        model_path=training["model_path"],
        test_start_ms=test_start_ms,
        metrics_path=metrics_path,
        alert_rate=params.alert_rate,
        fingerprint=fingerprint,
        chunk_scale=params.chunk_scale,
    )
    registered = _run(
        register_model,
        states,
        output_done=_registered(params.out, version),
        out=params.out,
        version=version,
        model_path=training["model_path"],
        metrics=metrics,
        training=training,
        health=health,
        params={**model_params, "seed": params.seed, "alert_rate": params.alert_rate},
        split=split,
    )
    _publish_card(registered["card"])
    summary = {
        "version": registered["version"],
        "uri": registered["uri"],
        "fingerprint": fingerprint,
        "rows": health["rows"],
        "files": health["files"],
        "fraud_rows": health["fraud_rows"],
        "features_rows": features["rows"],
        "train_rows": training["train_rows"],
        "sampled_rows": training["sampled_rows"],
        "split": split,
        "metrics": {k: v for k, v in metrics.items() if k != "seconds"},
        "steps": states,
        "seconds": round(time.monotonic() - started, 2),
    }
    logger.info(
        "model %s: PR-AUC %.3f (fraud rate %.4f, %.0fx), ROC-AUC %.3f, recall %.3f at %.1f%% "
        "alerts; steps %s; %.1f s",
        registered["version"],
        metrics["pr_auc"],
        metrics["fraud_rate"],
        metrics["pr_auc_lift"],
        metrics["roc_auc"],
        metrics["recall_at_alert"],
        100 * metrics["alert_rate"],
        states,
        summary["seconds"],
    )
    return summary


def _publish_card(card: str) -> None:
    """The model card as a markdown artifact of the flow run."""
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(card, key="fraud-model-card", description="fraud model card")
    except Exception as exc:  # an artifact must never fail the work
        get_run_logger().warning("model card artifact failed: %s", exc)


def demo(workdir: Path) -> str:
    """Generate a small fraud dataset, train on it, then run again (every step cached)."""
    from flows.fraud_synth.generate import generate_dataset_local

    dataset = workdir / "ml-fraud-data"
    started = time.monotonic()
    generate_dataset_local(
        dataset, transactions=120_000, seed=8, start="2024-01-01", end="2024-02-29", files=4
    )
    first = train_fraud_model(
        dataset=str(dataset), out=str(workdir / "ml-models"), max_iter=80, seed=8
    )
    again_started = time.monotonic()
    again = train_fraud_model(
        dataset=str(dataset), out=str(workdir / "ml-models"), max_iter=80, seed=8
    )
    cached = sum(state == "Cached" for state in again["steps"].values())
    metrics = first["metrics"]
    return (
        f"fraud model {first['version']} on {first['rows']:,} transactions in "
        f"{first['files']} files: PR-AUC {metrics['pr_auc']:.3f} ({metrics['pr_auc_lift']:.0f}x "
        f"the fraud rate), ROC-AUC {metrics['roc_auc']:.3f}, "
        f"recall {metrics['recall_at_alert']:.2f} at {metrics['alert_rate']:.0%} alerts, "
        f"{first['seconds']:.1f} s; re-run: "
        f"{cached}/{len(again['steps']) - 1} steps cached, "
        f"{time.monotonic() - again_started:.1f} s (total {time.monotonic() - started:.1f} s)"
    )


if __name__ == "__main__":
    import sys

    print(
        train_fraud_model(
            dataset=sys.argv[1], out=sys.argv[2] if len(sys.argv) > 2 else "data/models"
        )
    )
