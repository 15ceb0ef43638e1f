"""Prefect flows over StreamFlow's functions: one per stage, and the monthly pipeline.

Flows only orchestrate; the work is in the plain functions they call (which tests call directly).
Retries are set where a retry is safe (ingestion and materialization are idempotent, a contract
violation is never retried), and ingestion is cached on the content of the month's files.

Every flow here is deployed by the worker (``orchestration.deployments``): the monthly pipeline on
its schedule, the others on demand. Defaults (the candidate's model and feature service) are read
from Settings when a flow runs, never at import.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.context import TaskRunContext

from streamflow.months import last_month_end
from streamflow.settings import get_settings


def _month_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Same files, same as_of, same database: the month is already loaded as it would be again."""
    digest = hashlib.sha256()
    folder = Path(parameters["month_dir"])
    for path in sorted(folder.glob("*.csv")):
        digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    settings = get_settings()
    database = settings.database_url or f"{settings.pg_dir}/{settings.database_name}"
    digest.update(f"{parameters['as_of']}|{database}".encode())
    return f"ingest-{digest.hexdigest()}"


def _retry_unless_bad_data(task, task_run, state) -> bool:
    from streamflow.data.validate import ContractError

    try:
        state.result()
    except ContractError:
        return False
    except Exception:
        return True
    return False


@task(
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_unless_bad_data,
    cache_key_fn=_month_key,
    cache_expiration=timedelta(days=1),
)
def ingest_task(month_dir: str, as_of: str) -> dict[str, int]:
    from streamflow.data.ingest import ingest_month

    result = ingest_month(month_dir, as_of, get_settings())
    get_run_logger().info("ingested %s as of %s: %s", month_dir, as_of, result.row_counts)
    return result.row_counts


@task(retries=2, retry_delay_seconds=5)
def apply_task() -> None:
    from streamflow.features.apply import apply

    apply(get_settings())


@task(retries=2, retry_delay_seconds=5)
def materialize_task(as_of: str) -> dict[str, Any]:
    from streamflow.features.materialize import materialize

    result = materialize(get_settings(), date.fromisoformat(as_of))
    get_run_logger().info(
        "materialized the snapshot at %s (asked %s, %s): %d rows",
        result.snapshot_as_of,
        as_of,
        result.plan.reason,
        result.rows,
    )
    return {
        "as_of": as_of,
        "snapshot_as_of": result.snapshot_as_of.isoformat(),
        "reason": result.plan.reason,
        "rows": result.rows,
        "users": result.users,
    }


@task
def train_task(
    as_of: str, model_type: str, seed: int | None, feature_service: str, label_horizon: int
) -> int:
    from streamflow.training.train import train_model

    result = train_model(
        date.fromisoformat(as_of), model_type, seed, feature_service, label_horizon, get_settings()
    )
    get_run_logger().info(
        "version %s (%s on %s): roc_auc %.4f",
        result.version,
        model_type,
        feature_service,
        result.metrics["roc_auc"],
    )
    return result.version


@task
def promote_task(version: int | None, force: bool = False) -> dict[str, Any]:
    from streamflow.registry import promote

    decision = promote(get_settings(), version=version, best=version is None, force=force, by="prefect")
    get_run_logger().info("gate: %s", decision.reason)
    return {
        "version": decision.version,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "online_as_of": None if decision.online_as_of is None else decision.online_as_of.isoformat(),
        "materialized_for_promotion": decision.materialized,
    }


@flow(name="ingest_month")
def ingest_month_flow(month_dir: str, as_of: str) -> dict[str, int]:
    return ingest_task(month_dir, as_of)


@flow(name="materialize")
def materialize_flow(as_of: str) -> dict[str, Any]:
    apply_task()
    return materialize_task(as_of)


@flow(name="train")
def train_flow(
    as_of: str,
    model_type: str | None = None,
    seed: int | None = None,
    feature_service: str | None = None,
    label_horizon: int = 0,
) -> int:
    """Unset model_type / feature_service: STREAMFLOW_MODEL_TYPE / STREAMFLOW_FEATURE_SERVICE."""
    settings = get_settings()
    return train_task(
        as_of,
        model_type or settings.model_type,
        seed,
        feature_service or settings.feature_service,
        label_horizon,
    )


@flow(name="promote")
def promote_flow(version: int | None = None, force: bool = False) -> dict[str, Any]:
    return promote_task(version, force)


@flow(name="monthly_pipeline")
def monthly_pipeline(
    month_dir: str | None = None,
    as_of: str | None = None,
    model_type: str | None = None,
    feature_service: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """A new month: ingest -> materialize -> train a candidate -> gate -> promote (or keep).

    Scheduled runs pass nothing: as_of is the last month end and the export is read from
    ``<inbox>/<as_of>/`` (STREAMFLOW_INBOX_DIR); the candidate is STREAMFLOW_CANDIDATE_MODEL_TYPE
    on STREAMFLOW_CANDIDATE_FEATURE_SERVICE.
    """
    settings = get_settings()
    as_of = as_of or last_month_end(date.today()).isoformat()
    month_dir = month_dir or str(settings.inbox / as_of)
    model_type = model_type or settings.candidate_model_type
    feature_service = feature_service or settings.candidate_feature_service
    rows = ingest_task(month_dir, as_of)
    apply_task()
    materialized = materialize_task(as_of)
    version = train_task(as_of, model_type, seed, feature_service, 0)
    decision = promote_task(version)
    return {
        "month_dir": month_dir,
        "as_of": as_of,
        "model_type": model_type,
        "feature_service": feature_service,
        "ingested": rows,
        "materialized": materialized,
        "candidate": version,
        **decision,
    }


# --------------------------------------------------------------------------- monitoring


@task(retries=1, retry_delay_seconds=5)
def score_task(as_of: str) -> dict[str, Any]:
    from streamflow.monitoring.scoring import score_snapshot

    result = score_snapshot(get_settings(), date.fromisoformat(as_of))
    get_run_logger().info(
        "scored %d users of %s with version %s: %d predicted churners",
        result.rows,
        as_of,
        result.model_version,
        result.predicted_churners,
    )
    return {"as_of": as_of, "version": result.model_version, "rows": result.rows}


@task
def drift_task(reference: str, current: str, feature_service: str) -> dict[str, Any]:
    from streamflow.monitoring.drift import drift_report

    result = drift_report(
        get_settings(), date.fromisoformat(reference), date.fromisoformat(current), feature_service
    )
    get_run_logger().info(
        "drift %s -> %s: share %.3f (%s), target drift %s, prediction drift %s; report %s",
        reference,
        current,
        result.drift_share,
        ", ".join(result.drifted_features) or "no feature drifted",
        result.target_drift,
        result.prediction_drift,
        result.html_path,
    )
    return {
        "drift_share": result.drift_share,
        "drifted_features": list(result.drifted_features),
        "target_drift": result.target_drift,
        "prediction_drift": result.prediction_drift,
        "mlflow_run_id": result.mlflow_run_id,
    }


@task
def monitor_task(
    reference: str,
    current: str,
    threshold: float | None,
    model_type: str | None,
    feature_service: str | None,
    target_alpha: float | None = None,
    auc_drop: float | None = None,
) -> dict[str, Any]:
    from dataclasses import asdict

    from streamflow.monitoring import retrain

    decision = retrain.monitor_and_retrain(
        get_settings(),
        date.fromisoformat(reference),
        date.fromisoformat(current),
        threshold,
        model_type,
        feature_service,
        target_alpha=target_alpha,
        auc_drop=auc_drop,
    )
    get_run_logger().info("triggers fired: %s; %s", ", ".join(decision.fired) or "none", decision.reason)
    out = {k: v.isoformat() if isinstance(v, date) else v for k, v in asdict(decision).items()}
    return out | {"fired": list(decision.fired)}


@flow(name="score_snapshot")
def score_flow(as_of: str) -> dict[str, Any]:
    return score_task(as_of)


@flow(name="drift_report")
def drift_flow(reference: str, current: str, feature_service: str | None = None) -> dict[str, Any]:
    """Unset feature_service: STREAMFLOW_FEATURE_SERVICE."""
    return drift_task(reference, current, feature_service or get_settings().feature_service)


@flow(name="monitor_and_retrain")
def monitor_and_retrain_flow(
    reference: str,
    current: str,
    threshold: float | None = None,
    model_type: str | None = None,
    feature_service: str | None = None,
    target_alpha: float | None = None,
    auc_drop: float | None = None,
) -> dict[str, Any]:
    """Drift report -> (a retraining trigger fires) train a candidate -> gate -> promote or keep.

    Unset values come from settings (drift_threshold, target_drift_alpha, retrain_auc_drop,
    candidate_model_type, candidate_feature_service)."""
    return monitor_task(reference, current, threshold, model_type, feature_service, target_alpha, auc_drop)
