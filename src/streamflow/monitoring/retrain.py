"""Drift-gated retraining: a trigger fires -> train a candidate on the current month -> gate.

Three triggers, any one retrains, each reported with its figures (in the returned decision, the
drift report's MLflow run and the candidate's version tags): the share of drifted features reaches
``settings.drift_threshold``; the churn rate of the current month's labels differs from the
reference month's (the drift report's z-test, p < ``settings.target_drift_alpha``); when the current
month has labels, production's ROC-AUC on its hold-out users is more than
``settings.retrain_auc_drop`` below the one recorded when production was trained. Feature drift
alone can miss a change in what churn looks like: on the real months, January's model scores
below chance on February while few features drift; the labels' test catches it.

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

FEATURE_DRIFT, TARGET_DRIFT, HOLDOUT_AUC = "feature_drift", "target_drift", "holdout_auc"  # triggers


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
class Trigger:
    """One retraining trigger, checked: fired or not, with its figure and limit."""

    name: str  # feature_drift | target_drift | holdout_auc
    fired: bool
    value: float | None  # drift share | target p-value | hold-out ROC-AUC drop (None: not measured)
    limit: float  # threshold | alpha | margin
    detail: str  # the figures, in words


@dataclass(frozen=True)
class HoldoutAuc:
    """Production's ROC-AUC on the current month's hold-out users vs the one recorded at its training."""

    version: int
    trained_as_of: date
    recorded: float  # on the hold-out users of its own month (version tag holdout_roc_auc)
    current: float  # on the hold-out users of the current month

    @property
    def drop(self) -> float:
        return self.recorded - self.current


@dataclass(frozen=True)
class RetrainDecision:
    reference: date
    current: date
    drift_share: float
    threshold: float
    target_drift_p_value: float | None  # None: a month has no labels
    target_alpha: float
    production_auc_recorded: float | None  # production's training hold-out ROC-AUC (None: not measured)
    production_auc_current: float | None  # ... and on the current month's hold-out users
    auc_drop: float  # the margin
    triggers: tuple[Trigger, ...]  # every trigger checked, fired or not
    drift_run_id: str | None
    retrained: bool
    promoted: bool
    production_version: int | None  # before the decision
    candidate_version: int | None
    candidate_auc: float | None
    production_auc: float | None
    holdout_users: int  # users the gate compared both models on (0 when nothing was trained)
    reason: str
    online_as_of: date | None = None  # snapshot the online store serves after a promotion

    @property
    def fired(self) -> tuple[str, ...]:
        """Names of the triggers that fired (empty: nothing was retrained)."""
        return tuple(t.name for t in self.triggers if t.fired)


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
    held_out = holdout_mask(users, float(params.get("holdout_fraction", settings.holdout_fraction)))
    return frozenset(u for u, h in zip(users, held_out, strict=True) if not h)


def gate_split(settings: Settings, as_of: date, versions: list[int]) -> GateSplit:
    """The hold-out users the gate scores at ``as_of`` (as scores_on_holdout), and each version's
    training users."""
    from streamflow.training.models import holdout_mask

    users = _users(settings, as_of, as_of)
    held_out = holdout_mask(users, settings.holdout_fraction)  # train_model's split
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


def _has_labels(settings: Settings, as_of: date) -> bool:
    """Whether the month ``as_of`` has labels for users of its snapshot (a training set exists)."""
    with db.connect(db.target(settings), settings) as conn:
        return (
            conn.execute(
                "SELECT 1 FROM user_snapshots s JOIN labels l ON l.user_id = s.user_id AND l.as_of = s.as_of"
                " WHERE s.as_of = %s LIMIT 1",
                (as_of,),
            ).fetchone()
            is not None
        )


def production_holdout_auc(settings: Settings, version: int, current: date) -> HoldoutAuc:
    """A version's ROC-AUC on the hold-out users of ``current`` next to the one recorded when it was
    trained (on the hold-out users of its own month). The current figure is the gate's own
    (registry's cached per-month tag), so a later gate at ``current`` does not score it again."""
    import mlflow

    from streamflow.registry import holdout_auc

    client = mlflow.MlflowClient()
    tags = client.get_model_version(settings.model_name, str(version)).tags
    return HoldoutAuc(
        version=version,
        trained_as_of=date.fromisoformat(tags["as_of"]),
        recorded=float(tags["holdout_roc_auc"]),
        current=holdout_auc(client, settings, version, current),
    )


def evaluate_triggers(
    drift: Any,
    threshold: float,
    target_alpha: float,
    auc: HoldoutAuc | None,
    auc_drop: float,
    *,
    auc_missing: str = "not measured",
) -> tuple[Trigger, ...]:
    """The three retraining triggers on a DriftResult (and production's hold-out ROC-AUC when the
    current month has labels), each with its figures, fired or not."""
    share = drift.drift_share
    features = (
        f"{len(drift.drifted_features)}/{len(drift.features)} features of {drift.feature_service}:"
        f" {', '.join(drift.drifted_features) or 'none'}"
    )
    fired = share >= threshold
    triggers = [
        Trigger(
            FEATURE_DRIFT,
            fired,
            share,
            threshold,
            f"feature drift share {share:.3f} ({features}) {'>=' if fired else '<'} threshold {threshold}",
        )
    ]
    target = drift.target
    if target is None:
        missing = "target drift not measured (a month has no labels)"
        triggers.append(Trigger(TARGET_DRIFT, False, None, target_alpha, missing))
    else:
        fired = target.p_value < target_alpha
        triggers.append(
            Trigger(
                TARGET_DRIFT,
                fired,
                target.p_value,
                target_alpha,
                f"target drift: churn rate {target.reference_rate:.4f} -> {target.current_rate:.4f}"
                f" ({target.difference:+.4f}), p = {target.p_value:.2g}"
                f" {'<' if fired else '>='} alpha {target_alpha}",
            )
        )
    if auc is None:
        triggers.append(Trigger(HOLDOUT_AUC, False, None, auc_drop, f"hold-out ROC-AUC {auc_missing}"))
    else:
        fired = auc.drop > auc_drop
        triggers.append(
            Trigger(
                HOLDOUT_AUC,
                fired,
                auc.drop,
                auc_drop,
                f"production v{auc.version} hold-out ROC-AUC {auc.current:.4f} on {drift.current} vs"
                f" {auc.recorded:.4f} recorded at training ({auc.trained_as_of}): drop {auc.drop:.4f}"
                f" {'>' if fired else '<='} margin {auc_drop}",
            )
        )
    return tuple(triggers)


def _log_to_run(run_id: str | None, tags: dict[str, Any], metrics: dict[str, float]) -> None:
    """Tags and metrics on a (finished) run: the drift report's, where the decision is read."""
    import time

    import mlflow
    from mlflow.entities import Metric, RunTag

    if run_id:
        now = int(time.time() * 1000)
        mlflow.MlflowClient().log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )


def monitor_and_retrain(
    settings: Settings,
    reference: date,
    current: date,
    threshold: float | None = None,
    model_type: str | None = None,
    feature_service: str | None = None,
    *,
    target_alpha: float | None = None,
    auc_drop: float | None = None,
    drift: Any | None = None,
    drift_service: str | None = None,
) -> RetrainDecision:
    """Drift report ``reference`` -> ``current``; when a trigger fires, train a candidate at ``current``
    and promote it if it passes the gate.

    Triggers (any one retrains): the feature-drift share reaches ``threshold``; the churn-rate test
    between both months' labels has p below ``target_alpha``; when ``current`` has labels,
    production's hold-out ROC-AUC there is more than ``auc_drop`` below the one recorded at its
    training. Unset values come from settings (drift_threshold, target_drift_alpha,
    retrain_auc_drop, candidate_model_type, candidate_feature_service). A promoted candidate gets the
    online store materialized to ``current`` first (registry.promote).
    ``drift`` reuses a DriftResult already computed for the pair; drift is
    measured over the production model's feature service unless ``drift_service`` says."""
    from streamflow.monitoring.drift import drift_report
    from streamflow.registry import production_version, promote
    from streamflow.training.tracking import use_mlflow
    from streamflow.training.train import train_model

    threshold = settings.drift_threshold if threshold is None else threshold
    model_type = model_type or settings.candidate_model_type
    feature_service = feature_service or settings.candidate_feature_service
    target_alpha = settings.target_drift_alpha if target_alpha is None else target_alpha
    auc_drop = settings.retrain_auc_drop if auc_drop is None else auc_drop
    use_mlflow(settings)
    production = production_version(settings)
    if drift is None:
        if drift_service is None:
            drift_service = _service_of(settings, production)
        drift = drift_report(settings, reference, current, drift_service)

    auc, auc_missing = None, "not measured"
    if production is None:
        auc_missing = "not measured (no production model)"
    elif not _has_labels(settings, current):
        auc_missing = f"not measured (no labels for {current} yet)"
    else:
        auc = production_holdout_auc(settings, production, current)
    triggers = evaluate_triggers(drift, threshold, target_alpha, auc, auc_drop, auc_missing=auc_missing)
    fired = tuple(t for t in triggers if t.fired)
    names = ", ".join(t.name for t in fired) or "none"
    figures = {
        "retrain_threshold": threshold,
        "retrain_target_alpha": target_alpha,
        "retrain_auc_drop_margin": auc_drop,
        **({"target_drift_p_value": drift.target.p_value} if drift.target is not None else {}),
        **(
            {
                "production_holdout_auc_recorded": auc.recorded,
                "production_holdout_auc_current": auc.current,
                "production_holdout_auc_drop": auc.drop,
            }
            if auc is not None
            else {}
        ),
    }
    run_tags = {"retrain_triggers": names} | {f"retrain_trigger.{t.name}": t.detail for t in triggers}
    common_fields = {
        "reference": reference,
        "current": current,
        "drift_share": drift.drift_share,
        "threshold": threshold,
        "target_drift_p_value": None if drift.target is None else drift.target.p_value,
        "target_alpha": target_alpha,
        "production_auc_recorded": None if auc is None else auc.recorded,
        "production_auc_current": None if auc is None else auc.current,
        "auc_drop": auc_drop,
        "triggers": triggers,
        "drift_run_id": drift.mlflow_run_id,
    }
    if not fired:
        reason = "no retraining: " + "; ".join(t.detail for t in triggers)
        log.info(reason)
        _log_to_run(
            drift.mlflow_run_id, run_tags | {"retrain_decision": "skipped", "retrain_reason": reason}, figures
        )
        return RetrainDecision(
            **common_fields,
            retrained=False,
            promoted=False,
            production_version=production,
            candidate_version=None,
            candidate_auc=None,
            production_auc=None,
            holdout_users=0,
            reason=reason,
        )

    trigger = f"retrained on {names}: " + "; ".join(t.detail for t in fired)
    log.info("%s: training %s on %s at %s", trigger, model_type, feature_service, current)
    candidate = train_model(current, model_type, feature_service=feature_service, settings=settings)
    compared = [candidate.version, *([production] if production is not None else [])]
    split = gate_split(settings, current, compared)
    overlaps = split.overlaps()
    leakage = f"{len(split.holdout)} hold-out users of {current}; overlap with training users: " + ", ".join(
        f"v{v} {n}" for v, n in overlaps.items()
    )
    common = {
        "retrain_trigger": trigger,
        "retrain_triggers": names,
        "retrain_reference_as_of": reference.isoformat(),
        "retrain_current_as_of": current.isoformat(),
        "retrain_drift_share": f"{drift.drift_share:.6f}",
        "retrain_threshold": threshold,
        "retrain_target_drift_p_value": "" if drift.target is None else f"{drift.target.p_value:.6g}",
        "retrain_target_alpha": target_alpha,
        "retrain_production_auc_drop": "" if auc is None else f"{auc.drop:.6f}",
        "retrain_auc_drop_margin": auc_drop,
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
    reason = f"{trigger}; candidate v{candidate.version} {outcome}: {decision.reason}"
    _tag(settings, candidate.version, common | {"retrain_decision": outcome, "retrain_reason": reason})
    _log_to_run(
        drift.mlflow_run_id,
        run_tags
        | {"retrain_decision": outcome, "retrain_reason": reason, "retrain_candidate": candidate.version},
        figures,
    )
    log.info(reason)
    return RetrainDecision(
        **common_fields,
        retrained=True,
        promoted=decision.promoted,
        production_version=decision.previous_version,
        candidate_version=candidate.version,
        candidate_auc=decision.candidate_auc,
        production_auc=decision.production_auc,
        holdout_users=len(split.holdout),
        reason=reason,
        online_as_of=decision.online_as_of,
    )


def _service_of(settings: Settings, version: int | None) -> str:
    import mlflow

    from streamflow.features.definitions import DEFAULT_FEATURE_SERVICE

    if version is None:
        return DEFAULT_FEATURE_SERVICE
    mv = mlflow.MlflowClient().get_model_version(settings.model_name, str(version))
    return mv.tags.get("feature_service", DEFAULT_FEATURE_SERVICE)
