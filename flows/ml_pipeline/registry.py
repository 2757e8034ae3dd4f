"""Publish a model version into the registry: model file, metrics, features, data fingerprint
and a model card, atomically. No prefect here."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from flows.ml_pipeline.schema import FEATURES, MODEL_NAME, PIPELINE_VERSION


def model_card(
    registration: dict[str, Any],
    health: dict[str, Any],
    metrics: dict[str, Any],
    training: dict[str, Any],
) -> str:
    """The model card: data, split, parameters, metrics overall and per fraud scenario.
    ``registration`` gives the version, parameters and split."""
    version, params, split = (registration[k] for k in ("version", "params", "split"))
    lines = [
        f"# Fraud model {version}",
        "",
        "HistGradientBoostingClassifier (scikit-learn) on per-customer and per-device "
        "transaction features (1 h / 24 h / 7 d windows).",
        "",
        "## Data",
        f"- dataset: `{health['dataset']}` (fingerprint `{health['fingerprint'][:16]}`)",
        f"- {health['rows']:,} transactions in {health['files']} files, "
        f"{health['fraud_rows']:,} fraud",
        f"- train: before {split['train_end']} ({training['train_rows']:,} rows, "
        f"{training['train_fraud']:,} fraud; sampled {training['sampled_rows']:,})",
        f"- test: from {split['test_start']} ({metrics['rows']:,} rows, "
        f"{metrics['fraud_rows']:,} fraud)",
        "",
        "## Parameters",
        *[f"- {k}: {v}" for k, v in sorted(params.items())],
        "",
        "## Metrics (test period)",
        "| metric | value |",
        "|---|---|",
        f"| PR-AUC | {metrics['pr_auc']:.4f} |",
        f"| PR-AUC of a trivial baseline (fraud rate) | {metrics['baseline_pr_auc']:.4f} |",
        f"| lift over the baseline | {metrics['pr_auc_lift']:.1f}x |",
        f"| ROC-AUC | {metrics['roc_auc']:.4f} |",
        f"| recall at {metrics['alert_rate']:.2%} alerts | {metrics['recall_at_alert']:.4f} |",
        f"| precision at {metrics['alert_rate']:.2%} alerts | "
        f"{metrics['precision_at_alert']:.4f} |",
        "",
        "## Per fraud scenario",
        "| scenario | fraud rows | recall at alert rate | PR-AUC | ROC-AUC |",
        "|---|---|---|---|---|",
    ]
    for scenario, values in metrics["per_scenario"].items():
        lines.append(
            f"| {scenario} | {values['rows']:,} | {values['recall_at_alert']:.4f} | "
            f"{values['pr_auc']:.4f} | {values['roc_auc']:.4f} |"
        )
    lines += ["", "## Features", ", ".join(f"`{name}`" for name in FEATURES), ""]
    return "\n".join(lines)


def model_version(
    fingerprint: str, model_params: dict[str, Any], split: dict[str, str], seed: int
) -> str:
    """A model version named by what made it: the data fingerprint and the settings."""
    settings = {"params": model_params, "split": split, "seed": seed, "pipeline": PIPELINE_VERSION}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{fingerprint[:12]}-{digest[:8]}"


def register_model(
    out: str,
    version: str,
    model_path: str,
    metrics: dict[str, Any],
    training: dict[str, Any],
    health: dict[str, Any],
    params: dict[str, Any],
    split: dict[str, str],
) -> dict[str, Any]:
    """Publish a version into the registry: model, metrics, features, fingerprint, card, then
    ``registration.json`` (the version is complete) and ``latest.json`` (the pointer)."""
    from headroom.storage import open_storage

    storage = open_storage(out)
    prefix = f"{MODEL_NAME}/{version}"
    storage.put_file(model_path, f"{prefix}/model.pkl")
    storage.write_json(f"{prefix}/metrics.json", metrics)
    storage.write_json(f"{prefix}/features.json", {"features": list(FEATURES)})
    storage.write_json(
        f"{prefix}/fingerprint.json",
        {k: health[k] for k in ("dataset", "fingerprint", "files", "rows", "bytes", "seed")},
    )
    registration = {
        "name": MODEL_NAME,
        "version": version,
        "fingerprint": health["fingerprint"],
        "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": [
            "model.pkl",
            "metrics.json",
            "features.json",
            "fingerprint.json",
            "MODEL_CARD.md",
        ],
        "pr_auc": metrics["pr_auc"],
        "params": params,
        "split": split,
        "pipeline": PIPELINE_VERSION,
    }
    card = model_card(registration, health, metrics, training)
    with storage.atomic_output(f"{prefix}/MODEL_CARD.md") as temporary:
        with storage.filesystem.open_output_stream(temporary) as sink:
            sink.write(card.encode())
    storage.write_json(f"{prefix}/registration.json", registration)
    storage.write_json(f"{MODEL_NAME}/latest.json", {"version": version, "path": prefix})
    return {
        "version": version,
        "uri": storage.path(prefix) if storage.is_local else f"{out.rstrip('/')}/{prefix}",
        "card": card,
    }
