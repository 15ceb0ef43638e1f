"""Drift between two snapshots: features (Evidently), target (each month's own labels) and predictions.

Feature drift runs Evidently's DataDriftPreset over the feature service's features only (no ids, no
timestamps), with Evidently's own choice of method per column: on samples this size (> 1,000 rows)
that is a distance (normed Wasserstein for numeric columns, Jensen-Shannon for categorical and
few-valued ones, flagged at >= 0.1), because p-values flag every negligible shift once there are
thousands of rows. ``num_method``/``cat_method`` select a test instead (e.g. "ks", "chisquare"); a
feature's ``p_value`` is set when its method is a statistical test.

Target drift compares the churn rate in the labels OF EACH MONTH (labels as_of=reference vs labels
as_of=current, never one month's labels twice), with a two-proportion z-test; it is flagged when its
p-value is below ``settings.target_drift_alpha`` (a retraining trigger, see retrain.py). Prediction drift
compares the production model's batch scores of both snapshots (scored first if they are not yet).

Each report is saved as HTML + JSON under ``settings.reports_dir``, logged as an MLflow run in the
StreamFlow experiment, and recorded in ``drift_reports`` (the API exports the latest drift share).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamflow import db
from streamflow.data.contracts import LABEL_COLUMN
from streamflow.features.definitions import DEFAULT_FEATURE_SERVICE, feature_spec
from streamflow.features.spec import MISSING_CATEGORY
from streamflow.settings import Settings

log = logging.getLogger(__name__)

TARGET_METHOD = "z"  # two-proportion z-test on the churn label
PREDICTION_COLUMN = "probability"
# Evidently methods whose score is a p-value (drift when score < threshold); the others are distances.
_P_VALUE_METHODS = {
    "ks",
    "z",
    "chisquare",
    "t_test",
    "mannw",
    "fisher_exact",
    "g_test",
    "anderson",
    "cramer_von_mises",
    "epps_singleton",
}


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    kind: str  # numerical | categorical
    method: str
    score: float  # p-value for a test, distance otherwise
    threshold: float
    drifted: bool
    p_value: float | None  # the score when the method is a statistical test


@dataclass(frozen=True)
class TargetDrift:
    reference_rate: float  # churn rate in the reference month's labels
    current_rate: float  # churn rate in the current month's labels
    difference: float  # current - reference
    p_value: float  # two-proportion z-test
    alpha: float  # drifted when p_value < alpha (settings.target_drift_alpha)
    drifted: bool
    reference_rows: int
    current_rows: int


@dataclass(frozen=True)
class PredictionDrift:
    model_version: int
    method: str
    score: float
    threshold: float
    drifted: bool
    reference_mean: float  # mean P(churn) over the reference snapshot
    current_mean: float
    reference_positive_rate: float  # share predicted to churn
    current_positive_rate: float


@dataclass(frozen=True)
class DriftResult:
    reference: date
    current: date
    feature_service: str
    drift_share: float  # share of the service's features flagged as drifted
    drifted_features: tuple[str, ...]
    features: dict[str, FeatureDrift] = field(repr=False)
    target: TargetDrift | None  # None: a month has no labels
    prediction: PredictionDrift | None  # None: no production model
    html_path: Path
    json_path: Path
    mlflow_run_id: str
    report_id: int
    seconds: float

    @property
    def target_drift(self) -> float | None:
        return None if self.target is None else self.target.difference

    @property
    def prediction_drift(self) -> float | None:
        return None if self.prediction is None else self.prediction.score

    def summary(self) -> dict[str, Any]:
        """JSON-ready."""
        out = asdict(self)
        out.update(
            reference=self.reference.isoformat(),
            current=self.current.isoformat(),
            html_path=str(self.html_path),
            json_path=str(self.json_path),
            drifted_features=list(self.drifted_features),
        )
        return out


def _evidently_frame(features: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Numeric columns as float64 (NaN for null), categorical and boolean ones as strings."""
    out = pd.DataFrame(index=features.index)
    for name in numeric:
        out[name] = pd.to_numeric(features[name]).astype("float64")
    for name in categorical:
        column = features[name].astype(object)
        out[name] = column.where(column.notna(), MISSING_CATEGORY).astype(str)
    return out


def _labels(settings: Settings, as_of: date, pins: Mapping[date, int] | None = None) -> pd.DataFrame:
    """The labels of the month ``as_of`` for the users of its snapshot (at its pinned revision)."""
    from streamflow.features.historical import relation

    pinned = {d: r for d, r in (pins or {}).items() if d == as_of}
    with db.connect(db.target(settings), settings) as conn:
        rows = conn.execute(
            f"SELECT l.user_id, l.{LABEL_COLUMN}::int FROM {relation('labels', pinned)} l"
            f" JOIN {relation('user_snapshots', pinned)} s ON s.user_id = l.user_id AND s.as_of = l.as_of"
            " WHERE l.as_of = %s",
            (as_of,),
        ).fetchall()
    return pd.DataFrame(rows, columns=["user_id", LABEL_COLUMN])


def _is_p_value(method: str) -> bool:
    return method in _P_VALUE_METHODS or "p_value" in method


def _column_results(snapshot: Any) -> dict[str, tuple[str, float, float, bool]]:
    """ValueDrift results by column: (method, score, threshold, drifted), drifted from Evidently's test."""
    from evidently.core.metric_types import TestStatus

    out = {}
    for result in snapshot.metric_results.values():
        config = result.to_dict().get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        drifted = any(t.status == TestStatus.FAIL for t in result.tests)
        out[config["column"]] = (
            str(config["method"]),
            float(result.value),
            float(config["threshold"]),
            drifted,
        )
    return out


def _drift_share(snapshot: Any) -> float:
    for result in snapshot.metric_results.values():
        config = result.to_dict().get("config", {})
        if str(config.get("type", "")).endswith("DriftedColumnsCount"):
            return float(result.to_dict()["value"]["share"])
    raise RuntimeError("the Evidently report has no DriftedColumnsCount")


def drift_report(
    settings: Settings,
    reference: date,
    current: date,
    service: str = DEFAULT_FEATURE_SERVICE,
    *,
    num_method: str | None = None,
    cat_method: str | None = None,
    pins: Mapping[date, int] | None = None,
) -> DriftResult:
    """Compare the snapshot at ``current`` with the one at ``reference``; save, log and record the report.

    Each month is read at the revision it serves, or at its revision in ``pins``; a pinned month's
    production scores are computed in memory from its pinned features (``predictions`` holds the
    scores of the revisions served)."""
    import mlflow

    with warnings.catch_warnings():
        # Evidently's import warns about numpy.core, and the litestar it imports about its own API:
        # third-party DeprecationWarnings that Feast's import made visible (logs.py), nothing for us.
        warnings.simplefilter("ignore", DeprecationWarning)
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import ValueDrift
        from evidently.presets import DataDriftPreset

    from streamflow.data.ingest import prepare
    from streamflow.features.config import feature_store
    from streamflow.monitoring.scoring import (
        NoProductionModel,
        ensure_scored,
        load_model,
        score_batches,
        snapshot_features,
    )
    from streamflow.training.tracking import use_mlflow

    t0 = time.perf_counter()
    prepare(settings)  # drift_reports and predictions are a migration
    spec = feature_spec(service)
    numeric = list(spec.numeric)
    categorical = [*spec.boolean, *spec.categorical]
    store = feature_store(settings)
    pins = dict(pins or {})
    frames = {
        as_of: snapshot_features(settings, as_of, service, store, pins) for as_of in (reference, current)
    }

    # Production scores of both months (prediction drift) and each month's own labels (target drift).
    try:
        model = load_model(settings)
    except NoProductionModel:
        model = None
        log.warning("no production model: the drift report has no prediction drift")
    data: dict[date, pd.DataFrame] = {}
    labelled = True
    for as_of, frame in frames.items():
        part = _evidently_frame(frame, numeric, categorical)
        part.insert(0, "user_id", frame["user_id"].to_numpy())
        labels = _labels(settings, as_of, pins)
        labelled &= not labels.empty
        part = part.merge(labels, on="user_id", how="left")
        if model is not None and as_of in pins:
            chunks = list(score_batches(model, [frame]))
            scores = pd.DataFrame(
                {
                    "user_id": np.concatenate([c.user_ids for c in chunks]) if chunks else [],
                    PREDICTION_COLUMN: np.concatenate([c.probability for c in chunks]) if chunks else [],
                    "prediction": np.concatenate([c.prediction for c in chunks]) if chunks else [],
                }
            )
            part = part.merge(scores, on="user_id", how="left")
        elif model is not None:
            scores = ensure_scored(settings, as_of, model.version)
            part = part.merge(scores[["user_id", PREDICTION_COLUMN, "prediction"]], on="user_id", how="left")
        data[as_of] = part

    definition = DataDefinition(
        numerical_columns=[*numeric, *([PREDICTION_COLUMN] if model else [])],
        categorical_columns=[*categorical, *([LABEL_COLUMN] if labelled else [])],
    )
    metrics: list[Any] = [
        DataDriftPreset(columns=[*spec.names], num_method=num_method, cat_method=cat_method)
    ]
    if labelled:
        metrics.append(
            ValueDrift(column=LABEL_COLUMN, method=TARGET_METHOD, threshold=settings.target_drift_alpha)
        )
    if model is not None:
        metrics.append(ValueDrift(column=PREDICTION_COLUMN))
    columns = [*spec.names, *([LABEL_COLUMN] if labelled else []), *([PREDICTION_COLUMN] if model else [])]
    with warnings.catch_warnings():
        # A constant column (avg_session_mins_7d) makes numpy warn inside Evidently's correlations.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report(metrics, include_tests=True).run(
            Dataset.from_pandas(data[current][columns], data_definition=definition),
            Dataset.from_pandas(data[reference][columns], data_definition=definition),
        )
    by_column = _column_results(snapshot)
    features = {
        name: FeatureDrift(
            name=name,
            kind="numerical" if name in numeric else "categorical",
            method=by_column[name][0],
            score=by_column[name][1],
            threshold=by_column[name][2],
            drifted=by_column[name][3],
            p_value=by_column[name][1] if _is_p_value(by_column[name][0]) else None,
        )
        for name in spec.names
    }
    drifted = tuple(n for n, f in features.items() if f.drifted)
    share = _drift_share(snapshot)
    if not math.isclose(share, len(drifted) / len(features)):
        raise RuntimeError(f"Evidently's drift share {share} disagrees with its column tests {drifted}")

    target = None
    if labelled:
        ref_y, cur_y = (data[d][LABEL_COLUMN].dropna() for d in (reference, current))
        method, p_value, alpha, target_drifted = by_column[LABEL_COLUMN]
        target = TargetDrift(
            reference_rate=float(ref_y.mean()),
            current_rate=float(cur_y.mean()),
            difference=float(cur_y.mean() - ref_y.mean()),
            p_value=p_value,
            alpha=alpha,
            drifted=target_drifted,
            reference_rows=len(ref_y),
            current_rows=len(cur_y),
        )
    prediction = None
    if model is not None:
        method, score, threshold, pred_drifted = by_column[PREDICTION_COLUMN]
        ref_p, cur_p = (data[d] for d in (reference, current))
        prediction = PredictionDrift(
            model_version=model.version,
            method=method,
            score=score,
            threshold=threshold,
            drifted=pred_drifted,
            reference_mean=float(ref_p[PREDICTION_COLUMN].mean()),
            current_mean=float(cur_p[PREDICTION_COLUMN].mean()),
            reference_positive_rate=float(ref_p["prediction"].mean()),
            current_positive_rate=float(cur_p["prediction"].mean()),
        )

    stem = f"drift_{reference.isoformat()}_{current.isoformat()}"
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = settings.reports_dir / f"{stem}.html", settings.reports_dir / f"{stem}.json"
    snapshot.save_html(str(html_path))

    use_mlflow(settings)
    with mlflow.start_run(run_name=stem) as run:
        mlflow.set_tags(
            {
                "streamflow.kind": "drift_report",
                "reference_as_of": str(reference),
                "current_as_of": str(current),
            }
        )
        mlflow.log_params(
            {
                "reference_as_of": reference.isoformat(),
                "current_as_of": current.isoformat(),
                "feature_service": service,
                "features": len(features),
                "num_method": num_method or "auto",
                "cat_method": cat_method or "auto",
                "target_method": TARGET_METHOD,
                "target_alpha": settings.target_drift_alpha,
                "production_version": model.version if model else "none",
                # months read at another revision than the one they serve ({} : none)
                "revisions": json.dumps({d.isoformat(): r for d, r in sorted(pins.items())}),
            }
        )
        values = {"drift_share": share, "drifted_features": float(len(drifted))}
        if target is not None:
            values |= {
                "target_drift": target.difference,
                "target_drift_p_value": target.p_value,
                "target_churn_rate_reference": target.reference_rate,
                "target_churn_rate_current": target.current_rate,
            }
        if prediction is not None:
            values |= {
                "prediction_drift": prediction.score,
                "prediction_mean_reference": prediction.reference_mean,
                "prediction_mean_current": prediction.current_mean,
            }
        values |= {f"drift_score.{n}": f.score for n, f in features.items()}
        mlflow.log_metrics(values)
        result = DriftResult(
            reference=reference,
            current=current,
            feature_service=service,
            drift_share=share,
            drifted_features=drifted,
            features=features,
            target=target,
            prediction=prediction,
            html_path=html_path,
            json_path=json_path,
            mlflow_run_id=run.info.run_id,
            report_id=0,
            seconds=0.0,
        )
        result = replace(
            result,
            report_id=_record(settings, result, model.version if model else None),
            seconds=time.perf_counter() - t0,
        )
        json_path.write_text(
            json.dumps(
                {"summary": result.summary(), "evidently": snapshot.dict()}, indent=1, default=_jsonable
            )
        )
        mlflow.log_artifact(str(html_path), artifact_path="drift")
        mlflow.log_artifact(str(json_path), artifact_path="drift")

    log.info(
        "drift %s -> %s (%s): share %.3f %s, target %s, prediction %s",
        reference,
        current,
        service,
        share,
        list(drifted),
        "n/a" if target is None else f"{target.difference:+.4f} (p={target.p_value:.3g})",
        "n/a" if prediction is None else f"{prediction.score:.4f}",
    )
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (date, Path)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _record(settings: Settings, result: DriftResult, model_version: int | None) -> int:
    details = {n: asdict(f) for n, f in result.features.items()}
    with db.connect(db.target(settings), settings) as conn, conn.transaction():
        row = conn.execute(
            "INSERT INTO drift_reports (reference_as_of, current_as_of, feature_service, drift_share,"
            " drifted_features, target_drift, target_drift_p_value, prediction_drift, model_version,"
            " mlflow_run_id, report_html, report_json, details)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb) RETURNING id",
            (
                result.reference,
                result.current,
                result.feature_service,
                result.drift_share,
                list(result.drifted_features),
                result.target_drift,
                None if result.target is None else result.target.p_value,
                result.prediction_drift,
                model_version,
                result.mlflow_run_id,
                str(result.html_path),
                str(result.json_path),
                json.dumps(details, default=_jsonable),
            ),
        ).fetchone()
    return int(row[0])


def latest_drift_share(settings: Settings, target: db.PgTarget | None = None) -> float | None:
    """Drift share of the newest month's latest report (None: no report yet). Light: for the API.

    ``target``: connect there as is; without it the embedded server is started if it is down.
    """
    with db.connect(target or db.target(settings), settings) as conn:
        row = conn.execute(
            "SELECT drift_share FROM drift_reports"
            " ORDER BY current_as_of DESC, created_at DESC, id DESC LIMIT 1"
        ).fetchone()
    return None if row is None else float(row[0])
