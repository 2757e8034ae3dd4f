"""Train the fraud model on a sample sized to the cap, and evaluate it in batches: PR-AUC,
ROC-AUC, recall at an alert rate, per fraud scenario. No prefect here."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from flows.ml_pipeline.features import (
    connect_duckdb,
    duckdb_threads,
    features_complete,
    step_cap_mb,
)
from flows.ml_pipeline.schema import (
    CATEGORICAL,
    FEATURES,
    MIN_TRAIN_FRAUD,
    NUMERIC_FEATURES,
    PIPELINE_VERSION,
    iso,
)
from headroom.errors import BadInput
from headroom.storage import open_storage


def _parts(features_dir: str) -> str:
    if not features_complete(features_dir):
        raise BadInput(f"features {features_dir}: no _features.json (features not complete)")
    return str(Path(features_dir) / "part-*.parquet")


def _encode(table: Any, categories: dict[str, list[str]]) -> Any:
    """The model matrix of an Arrow table, filled column by column (one copy of the data):
    numeric features as floats, categoricals as codes of a fixed vocabulary (unknown values
    and nulls become missing)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    matrix = np.empty((table.num_rows, len(FEATURES)), dtype=np.float64)
    for position, name in enumerate(NUMERIC_FEATURES):
        column = pc.cast(table.column(name), pa.float64())
        matrix[:, position] = column.to_numpy().astype(np.float64, copy=False)
    for offset, name in enumerate(CATEGORICAL):
        codes = pc.index_in(table.column(name), value_set=pa.array(categories[name], pa.string()))
        position = len(NUMERIC_FEATURES) + offset
        matrix[:, position] = pc.cast(codes, pa.float64()).to_numpy()
    return matrix


def train_model(
    features_dir: str,
    model_path: str,
    train_end_ms: int,
    model_params: dict[str, Any],
    seed: int = 0,
    rows_sampled: int = 1_000_000,
    cap_mb: float | None = None,
) -> dict[str, Any]:
    """Fit HistGradientBoosting on rows before ``train_end_ms``: every fraud row (up to half the
    sample) plus a hashed sample of genuine rows, weighted back to the true class ratio."""
    import numpy as np

    started = time.monotonic()
    cap = step_cap_mb(cap_mb)
    parts = _parts(features_dir)
    scratch = Path(model_path).parent / f".duckdb-{uuid.uuid4().hex[:8]}"
    con = connect_duckdb(cap / 2, str(scratch))
    try:
        train = {"parts": parts, "end": int(train_end_ms)}
        train_rows, train_fraud = _training_counts(con, train)
        genuine = train_rows - train_fraud
        fraud_share = min(1.0, (rows_sampled / 2) / train_fraud)
        genuine_share = min(
            1.0, max(0, rows_sampled - min(train_fraud, rows_sampled // 2)) / genuine
        )
        categories = _categories(con, train)
        drawn = {
            **train,
            "seed": int(seed),
            "fraud_share": float(fraud_share),
            "genuine_share": float(genuine_share),
        }
        matrix, labels = _sample_matrix(con, drawn, categories)
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
    weights = np.where(labels, 1.0 / fraud_share, 1.0 / genuine_share)
    model = _fit(matrix, labels, weights, model_params, seed, cap)
    bundle = {
        "model": model,
        "features": list(FEATURES),
        "categories": categories,
        "train_end_ms": int(train_end_ms),
        "pipeline_version": PIPELINE_VERSION,
    }
    with open_storage(Path(model_path).parent).atomic_output(Path(model_path).name) as temporary:
        with open(temporary, "wb") as handle:
            pickle.dump(bundle, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return {
        "model_path": model_path,
        "train_rows": int(train_rows),
        "train_fraud": int(train_fraud),
        "sampled_rows": int(len(labels)),
        "sampled_fraud": int(labels.sum()),
        "rows_sampled": int(rows_sampled),
        "model_bytes": os.path.getsize(model_path),
        "seconds": round(time.monotonic() - started, 2),
    }


def train_model_task(
    features_dir: str,
    model_path: str,
    train_end_ms: int,
    model_params: dict[str, Any],
    seed: int,
    fingerprint: str,
    rows_sampled: int = 1_000_000,
) -> dict[str, Any]:
    """:func:`train_model` under the cap of the guarded child (fingerprint: cache key)."""
    return train_model(features_dir, model_path, train_end_ms, model_params, seed, rows_sampled)


def _training_counts(con: Any, train: dict[str, Any]) -> tuple[int, int]:
    """(rows, fraud rows) before the end of training; BadInput when too few are fraud."""
    train_rows, train_fraud = con.execute(
        "SELECT count(*), count(*) FILTER (is_fraud) FROM read_parquet($parts) WHERE ts_ms < $end",
        train,
    ).fetchall()[0]
    if train_fraud < MIN_TRAIN_FRAUD:
        raise BadInput(
            f"train_end={iso(train['end'])}: only {train_fraud} fraud rows before it "
            f"(need {MIN_TRAIN_FRAUD}); move train_end later"
        )
    return train_rows, train_fraud


def _categories(con: Any, train: dict[str, Any]) -> dict[str, list[str]]:
    """The vocabulary of each categorical feature in the training period, sorted."""
    return {
        name: sorted(
            v[0]
            for v in con.execute(
                f"SELECT DISTINCT {name} FROM read_parquet($parts) "
                f"WHERE ts_ms < $end AND {name} IS NOT NULL",
                train,
            ).fetchall()
        )
        for name in CATEGORICAL
    }


def _sample_matrix(
    con: Any, drawn: dict[str, Any], categories: dict[str, list[str]]
) -> tuple[Any, Any]:
    """(model matrix, labels) of the training sample ``drawn`` describes, in id order."""
    import numpy as np
    import pyarrow as pa

    # A hash of (id, seed) picks the sample: the same rows whatever the thread count.
    pick = "(hash(transaction_id, $seed) % 1000000) / 1000000.0"
    sample = f"""FROM read_parquet($parts) WHERE ts_ms < $end
        AND ((is_fraud AND {pick} < $fraud_share)
             OR (NOT is_fraud AND {pick} < $genuine_share))"""
    (count,) = con.execute(f"SELECT count(*) {sample}", drawn).fetchall()[0]
    # The matrix is filled batch by batch: the sample is never held twice.
    matrix = np.empty((count, len(FEATURES)), dtype=np.float64)
    labels = np.empty(count, dtype=bool)
    columns = ", ".join(["transaction_id", "is_fraud", *FEATURES])
    reader = con.sql(
        f"SELECT {columns} {sample} ORDER BY transaction_id", params=drawn
    ).to_arrow_reader(65_536)
    filled = 0
    for batch in reader:
        rows = batch.num_rows
        table = pa.Table.from_batches([batch])
        matrix[filled : filled + rows] = _encode(table, categories)
        labels[filled : filled + rows] = table.column("is_fraud").to_numpy().astype(bool)
        filled += rows
    if filled != count:
        raise RuntimeError(f"sampled {filled} rows, counted {count}")
    return matrix, labels


def _fit(
    matrix: Any, labels: Any, weights: Any, model_params: dict[str, Any], seed: int, cap: float
) -> Any:
    """The fitted classifier, on half the cores at most."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    model = HistGradientBoostingClassifier(
        **model_params,
        categorical_features=[len(NUMERIC_FEATURES) + i for i in range(len(CATEGORICAL))],
        early_stopping=False,
        random_state=seed,
    )
    # OpenMP threads that find their cores busy spin and slow the fit down several times on a
    # shared machine: half the cores leaves room for the other tasks.
    threads = max(1, min(duckdb_threads(cap), (os.cpu_count() or 1) // 2))
    with threadpool_limits(limits=threads):
        model.fit(matrix, labels, sample_weight=weights)
    return model


def recall_at_alert_rate(scores: Any, alert_rate: float, ids: Any = None) -> tuple[Any, int]:
    """(mask of alerted rows, alert count): the top ``alert_rate`` share of rows by score, ties
    broken by transaction id so that the rows' order does not matter."""
    import numpy as np

    alerts = max(1, math.ceil(alert_rate * len(scores)))
    ids = np.arange(len(scores)) if ids is None else ids
    order = np.lexsort((ids, -scores))
    flagged = np.zeros(len(scores), dtype=bool)
    flagged[order[:alerts]] = True
    return flagged, alerts


def metrics_of(
    scores: Any, labels: Any, scenarios: Any, alert_rate: float, ids: Any = None
) -> dict[str, Any]:
    """PR-AUC, ROC-AUC and recall/precision at the alert rate, overall and per fraud scenario
    (each scenario's fraud rows against all genuine rows)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    fraud = int(labels.sum())
    if fraud == 0 or fraud == len(labels):
        raise BadInput(f"test period has {fraud} fraud rows of {len(labels)}: cannot evaluate")
    flagged, alerts = recall_at_alert_rate(scores, alert_rate, ids)
    result: dict[str, Any] = {
        "rows": int(len(labels)),
        "fraud_rows": fraud,
        "fraud_rate": fraud / len(labels),
        "pr_auc": float(average_precision_score(labels, scores)),
        "roc_auc": float(roc_auc_score(labels, scores)),
        "alert_rate": alert_rate,
        "alerts": alerts,
        "recall_at_alert": float((flagged & labels).sum() / fraud),
        "precision_at_alert": float((flagged & labels).sum() / alerts),
    }
    # A trivial baseline (one score for all) has PR-AUC = the fraud rate.
    result["baseline_pr_auc"] = result["fraud_rate"]
    result["pr_auc_lift"] = result["pr_auc"] / result["fraud_rate"]
    genuine = ~labels
    per_scenario = {}
    for scenario in sorted(set(scenarios[labels].tolist())):
        mine = labels & (scenarios == scenario)
        subset = mine | genuine
        per_scenario[scenario] = {
            "rows": int(mine.sum()),
            "recall_at_alert": float((flagged & mine).sum() / mine.sum()),
            "pr_auc": float(average_precision_score(mine[subset], scores[subset])),
            "roc_auc": float(roc_auc_score(mine[subset], scores[subset])),
        }
    result["per_scenario"] = per_scenario
    return _rounded(result)


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 6) if isinstance(value, float) else value


def evaluate_model(
    features_dir: str,
    model_path: str,
    test_start_ms: int,
    metrics_path: str,
    alert_rate: float = 0.01,
    rows_per_batch: int = 250_000,
    cap_mb: float | None = None,
) -> dict[str, Any]:
    """Score the rows from ``test_start_ms`` on, batch by batch; write and return the metrics."""
    import numpy as np
    import pyarrow as pa
    from threadpoolctl import threadpool_limits

    started = time.monotonic()
    cap = step_cap_mb(cap_mb)
    with open(model_path, "rb") as handle:
        bundle = pickle.load(handle)
    parts = _parts(features_dir)
    scratch = Path(metrics_path).parent / f".duckdb-{uuid.uuid4().hex[:8]}"
    con = connect_duckdb(cap / 2, str(scratch))
    scores, labels, scenarios, ids = [], [], [], []
    try:
        columns = ", ".join(["transaction_id", "is_fraud", "fraud_scenario", *FEATURES])
        # No ORDER BY: rows stream through in batches; ties are broken by id in the metrics.
        reader = con.sql(
            f"SELECT {columns} FROM read_parquet($parts) WHERE ts_ms >= $start",
            params={"parts": parts, "start": int(test_start_ms)},
        ).to_arrow_reader(rows_per_batch)
        for batch in reader:
            if batch.num_rows == 0:
                continue
            frame = pa.Table.from_batches([batch])
            with threadpool_limits(limits=1):
                matrix = _encode(frame, bundle["categories"])
                scores.append(bundle["model"].predict_proba(matrix)[:, 1])
            labels.append(frame.column("is_fraud").to_numpy().astype(bool))
            ids.append(frame.column("transaction_id").to_numpy())
            scenarios.append(frame.column("fraud_scenario").to_numpy(zero_copy_only=False))
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
    if not scores:
        raise BadInput(f"test_start={iso(test_start_ms)}: no transactions from it on")
    # PR-AUC and ROC-AUC do not depend on the order; sort by id anyway for exact sums.
    all_ids = np.concatenate(ids)
    order = np.argsort(all_ids, kind="stable")
    metrics = metrics_of(
        np.concatenate(scores)[order],
        np.concatenate(labels)[order],
        np.concatenate(scenarios)[order],
        alert_rate,
        all_ids[order],
    )
    metrics["test_start"] = iso(test_start_ms)
    metrics["seconds"] = round(time.monotonic() - started, 2)
    open_storage(Path(metrics_path).parent).write_json(Path(metrics_path).name, metrics)
    return metrics


def evaluate_model_task(
    features_dir: str,
    model_path: str,
    test_start_ms: int,
    metrics_path: str,
    alert_rate: float,
    fingerprint: str,
    rows_per_batch: int = 250_000,
) -> dict[str, Any]:
    """:func:`evaluate_model` under the cap of the guarded child (fingerprint: cache key)."""
    return evaluate_model(
        features_dir,
        model_path,
        test_start_ms,
        metrics_path,
        alert_rate,
        rows_per_batch,
    )


# ---------------------------------------------------------------------------------------------
