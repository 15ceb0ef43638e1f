"""Drift-gated retraining: drift above a threshold -> train a candidate on the current month -> gate.

The gate is :func:`streamflow.registry.promote`: candidate and production are scored on the SAME
users, the stable-hash hold-out of the current month, which neither model trained on. The hash split
(``holdout_mask``) depends on the user id only, so the hold-out users are the same set in every
month: production trained on the non-hold-out users of its own month, the candidate on those of
the current month. :func:`gate_split` recomputes the three user sets and the decision refuses to go
ahead if they overlap. Every decision is written as tags on the candidate version and on the drift
report's MLflow run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Any

from streamflow import db
from streamflow.settings import Settings

log = logging.getLogger(__name__)

DRIFT_THRESHOLD = 0.3  # retrain when the share of drifted features is above this
MODEL_TYPE = "logreg"
FEATURE_SERVICE = "churn_v2"
HOLDOUT_FRACTION = 0.25  # train_model's split; a version's own value is read from its run params


class LeakageError(AssertionError):
    """Gate users overlap the training users of a model the gate compares."""


@dataclass(frozen=True)
class GateSplit:
    """The users behind a gate decision at ``as_of``."""

    as_of: date
    holdout: frozenset[str]  # scored by both models
    training: dict[int, frozenset[str]]  # per version compared: the users it was fitted on

    def overlaps(self) -> dict[int, int]:
        return {v: len(self.holdout & users) for v, users in self.training.items()}


@dataclass(frozen=True)
class RetrainDecision:
    reference: date
    current: date
    drift_share: float
    threshold: float
    drift_run_id: str | None
    retrained: bool
    promoted: bool
    production_version: int | None  # before the decision
    candidate_version: int | None
    candidate_auc: float | None
    production_auc: float | None
    holdout_users: int  # users the gate compared both models on (0 when nothing was trained)
    reason: str


def _users(settings: Settings, as_of: date, label_as_of: date) -> list[str]:
    """Users of a training set: the snapshot at ``as_of`` with labels at ``label_as_of`` (as dataset.py)."""
    with db.connect(db.target(settings), settings) as conn:
        rows = conn.execute(
            "SELECT s.user_id FROM user_snapshots s JOIN labels l"
            " ON l.user_id = s.user_id AND l.as_of = %s WHERE s.as_of = %s",
            (label_as_of, as_of),
        ).fetchall()
    return [r[0] for r in rows]


def training_users(settings: Settings, version: int) -> frozenset[str]:
    """The users a registered version was fitted on (its run's as_of, label_as_of and hold-out split)."""
    import mlflow

    from streamflow.training.models import holdout_mask
    from streamflow.training.tracking import use_mlflow

    use_mlflow(settings)
    client = mlflow.MlflowClient()
    params = client.get_run(client.get_model_version(settings.model_name, str(version)).run_id).data.params
    users = _users(settings, date.fromisoformat(params["as_of"]), date.fromisoformat(params["label_as_of"]))
    held_out = holdout_mask(users, float(params.get("holdout_fraction", HOLDOUT_FRACTION)))
    return frozenset(u for u, h in zip(users, held_out, strict=True) if not h)


def gate_split(settings: Settings, as_of: date, versions: list[int]) -> GateSplit:
    """The hold-out users the gate scores at ``as_of`` (as scores_on_holdout), and each version's
    training users."""
    from streamflow.training.models import holdout_mask

    users = _users(settings, as_of, as_of)
    held_out = holdout_mask(users, HOLDOUT_FRACTION)
    return GateSplit(
        as_of,
        frozenset(u for u, h in zip(users, held_out, strict=True) if h),
        {v: training_users(settings, v) for v in versions},
    )


def _tag(settings: Settings, version: int, tags: dict[str, Any]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, str(version), key, str(value))


def _tag_run(run_id: str | None, tags: dict[str, Any]) -> None:
    import mlflow

    if run_id:
        client = mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_tag(run_id, key, str(value))


def monitor_and_retrain(
    settings: Settings,
    reference: date,
    current: date,
    threshold: float = DRIFT_THRESHOLD,
    model_type: str = MODEL_TYPE,
    feature_service: str = FEATURE_SERVICE,
    *,
    drift: Any | None = None,
    drift_service: str | None = None,
) -> RetrainDecision:
    """Drift report ``reference`` -> ``current``; above ``threshold``, train a candidate at ``current``
    and promote it if it passes the gate. ``drift`` reuses a DriftResult already computed for the pair;
    drift is measured over the production model's feature service unless ``drift_service`` says."""
    from streamflow.monitoring.drift import drift_report
    from streamflow.registry import production_version, promote
    from streamflow.training.tracking import use_mlflow
    from streamflow.training.train import train_model

    use_mlflow(settings)
    production = production_version(settings)
    if drift is None:
        if drift_service is None:
            drift_service = _service_of(settings, production)
        drift = drift_report(settings, reference, current, drift_service)
    share = drift.drift_share
    trigger = (
        f"drift share {share:.3f} ({len(drift.drifted_features)}/{len(drift.features)} features of"
        f" {drift.feature_service}: {', '.join(drift.drifted_features) or 'none'}) from {reference} to"
        f" {current}"
    )
    if not share > threshold:
        reason = f"{trigger} <= threshold {threshold}: no retraining"
        log.info(reason)
        _tag_run(drift.mlflow_run_id, {"retrain_decision": "skipped", "retrain_reason": reason})
        return RetrainDecision(
            reference=reference,
            current=current,
            drift_share=share,
            threshold=threshold,
            drift_run_id=drift.mlflow_run_id,
            retrained=False,
            promoted=False,
            production_version=production,
            candidate_version=None,
            candidate_auc=None,
            production_auc=None,
            holdout_users=0,
            reason=reason,
        )

    log.info(
        "%s > threshold %s: training %s on %s at %s", trigger, threshold, model_type, feature_service, current
    )
    candidate = train_model(current, model_type, feature_service=feature_service, settings=settings)
    compared = [candidate.version, *([production] if production is not None else [])]
    split = gate_split(settings, current, compared)
    overlaps = split.overlaps()
    leakage = f"{len(split.holdout)} hold-out users of {current}; overlap with training users: " + ", ".join(
        f"v{v} {n}" for v, n in overlaps.items()
    )
    common = {
        "retrain_trigger": f"{trigger} > threshold {threshold}",
        "retrain_reference_as_of": reference.isoformat(),
        "retrain_current_as_of": current.isoformat(),
        "retrain_drift_share": f"{share:.6f}",
        "retrain_threshold": threshold,
        "retrain_drift_run_id": drift.mlflow_run_id,
        "gate_holdout_users": len(split.holdout),
        "leakage_check": ("passed: " if not any(overlaps.values()) else "FAILED: ") + leakage,
    }
    if any(overlaps.values()):
        reason = f"not compared: gate users overlap training users ({leakage})"
        _tag(settings, candidate.version, common | {"retrain_decision": "error", "retrain_reason": reason})
        raise LeakageError(reason)

    decision = promote(settings, version=candidate.version, by="monitor_and_retrain")
    outcome = "promoted" if decision.promoted else "kept production"
    reason = f"{trigger} > threshold {threshold}; candidate v{candidate.version} {outcome}: {decision.reason}"
    _tag(settings, candidate.version, common | {"retrain_decision": outcome, "retrain_reason": reason})
    _tag_run(
        drift.mlflow_run_id,
        {"retrain_decision": outcome, "retrain_reason": reason, "retrain_candidate": candidate.version},
    )
    log.info(reason)
    return RetrainDecision(
        reference=reference,
        current=current,
        drift_share=share,
        threshold=threshold,
        drift_run_id=drift.mlflow_run_id,
        retrained=True,
        promoted=decision.promoted,
        production_version=decision.previous_version,
        candidate_version=candidate.version,
        candidate_auc=decision.candidate_auc,
        production_auc=decision.production_auc,
        holdout_users=len(split.holdout),
        reason=reason,
    )


def _service_of(settings: Settings, version: int | None) -> str:
    import mlflow

    from streamflow.features.definitions import DEFAULT_FEATURE_SERVICE

    if version is None:
        return DEFAULT_FEATURE_SERVICE
    mv = mlflow.MlflowClient().get_model_version(settings.model_name, str(version))
    return mv.tags.get("feature_service", DEFAULT_FEATURE_SERVICE)
