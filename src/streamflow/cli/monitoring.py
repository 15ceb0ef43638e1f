"""``streamflow score``, ``drift`` and ``monitor``: production on new months."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from streamflow import preflight
from streamflow.cli.options import (
    AsOf,
    Json,
    RevisionOpt,
    check_feature_service,
    check_model,
    parse_date,
)
from streamflow.cli.output import console, emit_json, rounded
from streamflow.cli.root import app
from streamflow.errors import UsageError
from streamflow.settings import Settings, get_settings


@app.command()
def score(
    as_of: AsOf,
    version: Annotated[
        int | None, typer.Option(help="Model version to score with (default: production).")
    ] = None,
    revision: RevisionOpt = None,
    as_json: Json = False,
) -> None:
    """Score every user of the snapshot at AS_OF with the production model (or VERSION) into `predictions`.

    With REVISION the month's features are read at that revision; its scores replace (AS_OF, VERSION)'s."""
    day = parse_date(as_of)
    settings = get_settings()
    with preflight.checks(settings) as check:
        check.snapshot(day)
        pins = check.revision(day, revision)
        check.applied()
    from streamflow.monitoring.scoring import score_snapshot

    if version is not None:
        _check_version(settings, version)
    r = score_snapshot(settings, day, version, pins=pins)
    if as_json:
        emit_json(
            {
                "as_of": r.as_of,
                "revision": revision,  # null: the revision the month serves
                "model_name": r.model_name,
                "model_version": r.model_version,
                "feature_service": r.feature_service,
                "threshold": r.threshold,
                "rows": r.rows,
                "predicted_churners": r.predicted_churners,
                "mean_probability": rounded(r.mean_probability),
                "replaced": r.replaced,
                "seconds": rounded(r.seconds, 3),
            }
        )
        return
    at = f" (revision {revision})" if revision is not None else ""
    console.print(
        f"scored {r.rows:,} users as of {r.as_of}{at} with {r.model_name} v{r.model_version}: "
        f"{r.predicted_churners:,} predicted churners, mean probability {r.mean_probability:.3f}"
    )


def _check_version(settings: Settings, version: int) -> None:
    import mlflow

    from streamflow.training.tracking import use_mlflow

    use_mlflow(settings)
    try:
        mlflow.MlflowClient().get_model_version(settings.model_name, str(version))
    except mlflow.exceptions.MlflowException:
        raise UsageError(f"--version: {settings.model_name} has no version {version}") from None


@app.command()
def drift(
    reference: Annotated[str, typer.Option(help="Reference snapshot YYYY-MM-DD.")],
    current: Annotated[str, typer.Option(help="Current snapshot YYYY-MM-DD.")],
    feature_service: Annotated[
        str | None,
        typer.Option(help="FeatureService whose features are compared (default STREAMFLOW_FEATURE_SERVICE)."),
    ] = None,
    revision: Annotated[
        int | None,
        typer.Option(
            "--revision",
            min=1,
            help="Read the --current month at this revision (default: the one it serves).",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Evidently drift report between two snapshots (HTML + JSON, logged to MLflow)."""
    ref, cur = parse_date(reference, "--reference"), parse_date(current, "--current")
    settings = get_settings()
    service = check_feature_service(feature_service or settings.feature_service)
    with preflight.checks(settings) as check:
        check.snapshot(ref)
        check.snapshot(cur)
        pins = check.revision(cur, revision)
        check.applied(service)
    from streamflow.monitoring.drift import drift_report

    r = drift_report(settings, ref, cur, service, pins=pins)
    if as_json:
        emit_json(drift_summary(r, revision))
        return
    console.print(
        f"drift share {r.drift_share:.3f} ({len(r.drifted_features)} of {len(r.features)} features): "
        + (", ".join(r.drifted_features) or "none")
    )
    if r.target is not None:
        t = r.target
        console.print(
            "target drift (churn rate, each month's own labels):"
            f" {t.reference_rate:.4f} -> {t.current_rate:.4f} ({t.difference:+.4f}), p = {t.p_value:.2g}"
            + (f" < alpha {t.alpha}: drifted" if t.drifted else f" >= alpha {t.alpha}")
        )
    else:
        console.print("target drift: not measured (a month has no labels)")
    if r.prediction is not None:
        console.print(f"prediction drift: {r.prediction_drift:.4f}")
    console.print(f"report: {escape(str(r.html_path))}")


def drift_summary(r: Any, revision: int | None = None) -> dict[str, Any]:
    return {
        "reference": r.reference,
        "current": r.current,
        "current_revision": revision,  # null: the revision the month serves
        "feature_service": r.feature_service,
        "drift_share": rounded(r.drift_share),
        "drifted_features": list(r.drifted_features),
        "features": {
            name: {
                "kind": f.kind,
                "method": f.method,
                "score": rounded(f.score),
                "threshold": f.threshold,
                "drifted": f.drifted,
                "p_value": rounded(f.p_value),
            }
            for name, f in r.features.items()
        },
        "target": None
        if r.target is None
        else {
            "reference_rate": rounded(r.target.reference_rate),
            "current_rate": rounded(r.target.current_rate),
            "difference": rounded(r.target.difference),
            "p_value": r.target.p_value,
            "alpha": r.target.alpha,
            "drifted": r.target.drifted,
        },
        "prediction": None
        if r.prediction is None
        else {
            "model_version": r.prediction.model_version,
            "method": r.prediction.method,
            "score": rounded(r.prediction.score),
            "drifted": r.prediction.drifted,
            "reference_mean": rounded(r.prediction.reference_mean),
            "current_mean": rounded(r.prediction.current_mean),
        },
        "html_path": r.html_path,
        "json_path": r.json_path,
        "mlflow_run_id": r.mlflow_run_id,
    }


@app.command("monitor")
def monitor(
    reference: Annotated[str, typer.Option(help="Snapshot production was trained on.")],
    current: Annotated[str, typer.Option(help="The new snapshot.")],
    threshold: Annotated[
        float | None,
        typer.Option(
            min=0, max=1, help="Feature-drift share that retrains (default STREAMFLOW_DRIFT_THRESHOLD)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Candidate model type (default STREAMFLOW_CANDIDATE_MODEL_TYPE).")
    ] = None,
    feature_service: Annotated[
        str | None,
        typer.Option(help="Candidate's FeatureService (default STREAMFLOW_CANDIDATE_FEATURE_SERVICE)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Drift check, then (when a retraining trigger fires) a candidate on CURRENT through the gate.

    Triggers: feature-drift share >= threshold; target drift p < STREAMFLOW_TARGET_DRIFT_ALPHA;
    production's hold-out ROC-AUC on CURRENT's labels more than STREAMFLOW_RETRAIN_AUC_DROP below
    its training one. A promoted candidate gets the online store materialized to CURRENT."""
    ref, cur = parse_date(reference, "--reference"), parse_date(current, "--current")
    settings = get_settings()
    model = check_model(model or settings.candidate_model_type)
    service = check_feature_service(feature_service or settings.candidate_feature_service)
    with preflight.checks(settings) as check:
        check.snapshot(ref)
        check.snapshot(cur)
        check.applied(service)
    from streamflow.monitoring import retrain

    d = retrain.monitor_and_retrain(settings, ref, cur, threshold, model, service)
    if as_json:
        emit_json(
            {
                "reference": d.reference,
                "current": d.current,
                "retrained": d.retrained,
                "promoted": d.promoted,
                "fired": list(d.fired),
                "triggers": [
                    {
                        "name": t.name,
                        "fired": t.fired,
                        "value": rounded(t.value),
                        "limit": t.limit,
                        "detail": t.detail,
                    }
                    for t in d.triggers
                ],
                "drift_share": rounded(d.drift_share),
                "drift_run_id": d.drift_run_id,
                "production_version": d.production_version,
                "candidate_version": d.candidate_version,
                "candidate_auc": rounded(d.candidate_auc),
                "production_auc": rounded(d.production_auc),
                "holdout_users": d.holdout_users,
                "online_as_of": d.online_as_of,
                "reason": d.reason,
            }
        )
        return
    if not d.retrained:
        console.print(escape(d.reason))  # "no retraining: " and every trigger's figures
        return
    console.print(f"retraining triggered by {', '.join(d.fired)}:")
    for t in d.triggers:
        console.print(f"  {'fired' if t.fired else 'not fired'}: {escape(t.detail)}")
    outcome = "promoted" if d.promoted else f"not promoted, production stays v{d.production_version}"
    against = "" if d.production_auc is None else f" vs production {d.production_auc:.4f}"
    console.print(
        f"candidate v{d.candidate_version} {outcome}: hold-out ROC-AUC {d.candidate_auc:.4f}{against}"
        f" on {d.holdout_users:,} users of {d.current}"
    )
    if d.promoted and d.online_as_of is not None:
        console.print(f"online store serves the snapshot at {d.online_as_of}")
