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
from typing import Any, NamedTuple

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE, CachePolicy

from flows.common.flow import publish_artifact, run_if_main
from flows.common.params import signature_from
from flows.ml_pipeline import dataset as ml_dataset
from flows.ml_pipeline import features as ml_features
from flows.ml_pipeline import model as ml_model
from flows.ml_pipeline import params as ml_params
from flows.ml_pipeline import registry as ml_registry
from flows.ml_pipeline import schema
from headroom import Chunking
from headroom.prefect import FLOW_HOOKS, ChunkScale, budgeted_task

CACHED_RESULTS = {"persist_result": True, "result_serializer": "json"}


NOT_IN_KEY = frozenset({"chunk_scale", "dataset", "dataset_dir"})


def step_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """The cache key of a step: its name, the pipeline version and its inputs, where the data is
    known by its fingerprint, not its location, and ``chunk_scale`` (how, not what) is left out."""
    inputs = {k: v for k, v in parameters.items() if k not in NOT_IN_KEY}
    document = [context.task.name, schema.PIPELINE_VERSION, inputs]
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


STEP_CACHE = CachePolicy.from_cache_key_fn(step_cache_key)


def _registered(out: str, version: str) -> bool:
    from headroom.storage import open_storage

    return open_storage(out).exists(f"{schema.MODEL_NAME}/{version}/registration.json")


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


def _cached_step(body: Any, tag: str, chunk: Chunking, name: str, **options: Any) -> Any:
    """A budgeted step whose small JSON result is cached by :data:`STEP_CACHE`."""
    step = budgeted_task(body, tag=tag, chunk=chunk, name=name, **options)
    return step.with_options(cache_policy=STEP_CACHE, **CACHED_RESULTS)


build_features = _cached_step(
    ml_features.build_features_task,
    "ml-features",
    # Transactions per batch of whole files (each batch also reads 7 days of look-back).
    Chunking("rows_per_batch", default=4_000_000, floor=50_000, bytes_per_row=400.0),
    "build-fraud-features",
    input_bytes=_dataset_bytes,
)
train_model = _cached_step(
    ml_model.train_model_task,
    "ml-train",
    # Rows sampled for the fit: the matrix, its binned copy and the booster's gradients.
    Chunking("rows_sampled", default=2_000_000, floor=20_000, bytes_per_row=800.0),
    "train-fraud-model",
)
evaluate_model = _cached_step(
    ml_model.evaluate_model_task,
    "ml-train",
    Chunking("rows_per_batch", default=250_000, floor=10_000, bytes_per_row=1_500.0),
    "evaluate-fraud-model",
)


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
    params = ml_params.TrainParams.from_call(locals())
    started = time.monotonic()
    states: dict[str, str] = {}
    health = _run(
        check_dataset, states, dataset=params.dataset, min_fraud_rows=params.min_fraud_rows
    )
    get_run_logger().info(
        "dataset %s: %s rows, %s fraud, fingerprint %s",
        params.dataset,
        f"{health['rows']:,}",
        f"{health['fraud_rows']:,}",
        health["fingerprint"][:16],
    )
    plan = _plan(params, health)
    dataset_dir = _local_dataset(params, plan, states)
    features, training, metrics = _fit(params, plan, dataset_dir, states)
    registered = _run(
        register_model,
        states,
        output_done=_registered(params.out, plan.version),
        out=params.out,
        version=plan.version,
        model_path=training["model_path"],
        metrics=metrics,
        training=training,
        health=health,
        params={**plan.model_params, "seed": params.seed, "alert_rate": params.alert_rate},
        split=plan.split,
    )
    publish_artifact(
        "markdown", registered["card"], key="fraud-model-card", description="fraud model card"
    )
    summary = {
        "version": registered["version"],
        "uri": registered["uri"],
        "fingerprint": plan.fingerprint,
        "rows": health["rows"],
        "files": health["files"],
        "fraud_rows": health["fraud_rows"],
        "features_rows": features["rows"],
        "train_rows": training["train_rows"],
        "sampled_rows": training["sampled_rows"],
        "split": plan.split,
        "metrics": {k: v for k, v in metrics.items() if k != "seconds"},
        "steps": states,
        "seconds": round(time.monotonic() - started, 2),
    }
    _log_model(summary, metrics)
    return summary


class Plan(NamedTuple):
    """What a run trains: the dataset's fingerprint, the split, the model version and where
    the steps write."""

    fingerprint: str
    train_end_ms: int
    test_start_ms: int
    split: dict[str, str]
    model_params: dict[str, Any]
    version: str
    work: Path


def _plan(params: ml_params.TrainParams, health: dict[str, Any]) -> Plan:
    """The run's plan from its parameters and the dataset's health record."""
    fingerprint = health["fingerprint"]
    train_end_ms, test_start_ms = ml_params.resolve_split(
        params, health["min_ts_ms"], health["max_ts_ms"]
    )
    split = {"train_end": schema.iso(train_end_ms), "test_start": schema.iso(test_start_ms)}
    model_params = params.model_params()
    version = ml_registry.model_version(fingerprint, model_params, split, params.seed)
    return Plan(
        fingerprint,
        train_end_ms,
        test_start_ms,
        split,
        model_params,
        version,
        params.local_workdir(),
    )


def _local_dataset(params: ml_params.TrainParams, plan: Plan, states: dict[str, str]) -> str:
    """The dataset's local directory: itself, or the staged copy of a remote one."""
    local = schema.local_path(params.dataset)
    if local is not None:
        return str(local)
    staged = ml_dataset.staged_dir(plan.work, plan.fingerprint) / "manifest.json"
    return str(
        _run(
            stage_dataset,
            states,
            output_done=staged.is_file(),
            dataset=params.dataset,
            fingerprint=plan.fingerprint,
            cache_root=str(plan.work),
        )
    )


def _fit(
    params: ml_params.TrainParams, plan: Plan, dataset_dir: str, states: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Features, training and evaluation: each step's record."""
    features_dir = str(plan.work / f"features-{plan.fingerprint[:16]}")
    model_path = str(plan.work / f"model-{plan.version}.pkl")
    metrics_path = str(plan.work / f"metrics-{plan.version}-{params.alert_rate:g}.json")
    common = {"fingerprint": plan.fingerprint, "chunk_scale": params.chunk_scale}
    features = _run(
        build_features,
        states,
        output_done=ml_features.features_complete(features_dir),
        dataset_dir=dataset_dir,
        features_dir=features_dir,
        **common,
    )
    training = _run(
        train_model,
        states,
        output_done=Path(model_path).is_file(),
        features_dir=features["features_dir"],
        model_path=model_path,
        train_end_ms=plan.train_end_ms,
        model_params=plan.model_params,
        seed=params.seed,
        **common,
    )
    metrics = _run(
        evaluate_model,
        states,
        output_done=Path(metrics_path).is_file(),
        features_dir=features["features_dir"],
        model_path=training["model_path"],
        test_start_ms=plan.test_start_ms,
        metrics_path=metrics_path,
        alert_rate=params.alert_rate,
        **common,
    )
    return features, training, metrics


def _log_model(summary: dict[str, Any], metrics: dict[str, Any]) -> None:
    get_run_logger().info(
        "model %s: PR-AUC %.3f (fraud rate %.4f, %.0fx), ROC-AUC %.3f, recall %.3f at %.1f%% "
        "alerts; steps %s; %.1f s",
        summary["version"],
        metrics["pr_auc"],
        metrics["fraud_rate"],
        metrics["pr_auc_lift"],
        metrics["roc_auc"],
        metrics["recall_at_alert"],
        100 * metrics["alert_rate"],
        summary["steps"],
        summary["seconds"],
    )


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


run_if_main(__name__, train_fraud_model, demo)
