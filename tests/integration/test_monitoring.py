"""Batch scoring, drift and drift-gated retraining on the real months (real PostgreSQL, Feast, MLflow)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date

import mlflow
import numpy as np
import pytest

from streamflow import db
from streamflow.features.definitions import feature_spec
from streamflow.monitoring.drift import DriftResult, drift_report, latest_drift_share
from streamflow.monitoring.retrain import gate_split, monitor_and_retrain
from streamflow.monitoring.scoring import load_scores, score_snapshot
from streamflow.registry import production_version, promote
from streamflow.settings import Settings
from streamflow.training.dataset import training_set
from streamflow.training.models import holdout_mask, to_model_input
from streamflow.training.tracking import use_mlflow
from tests.integration.conftest import FEB, JAN, TrainedStack

USERS = 7043


@pytest.fixture(scope="module")
def monitored(trained: TrainedStack) -> Iterator[TrainedStack]:
    """Production = the course forest (churn_v1, trained on January); the alias is restored afterwards."""
    s = trained.settings
    use_mlflow(s)
    client = mlflow.MlflowClient()
    before = production_version(s)
    promote(s, version=trained.baseline.version, force=True, by="test_monitoring")
    yield trained
    use_mlflow(s)
    if before is None:
        client.delete_registered_model_alias(s.model_name, s.production_alias)
    else:
        client.set_registered_model_alias(s.model_name, s.production_alias, str(before))


@pytest.fixture(scope="module")
def drift(monitored: TrainedStack) -> DriftResult:
    return drift_report(monitored.settings, JAN, FEB)


def _versions(settings: Settings) -> set[int]:
    use_mlflow(settings)
    return {
        int(mv.version) for mv in mlflow.MlflowClient().search_model_versions(f"name='{settings.model_name}'")
    }


def test_batch_scoring_is_idempotent_and_matches_the_reference_pipeline(monitored: TrainedStack) -> None:
    s, version = monitored.settings, monitored.baseline.version
    first = score_snapshot(s, JAN)
    rows_first = load_scores(s, JAN, version)
    second = score_snapshot(s, JAN)
    rows_second = load_scores(s, JAN, version)

    assert first.model_version == second.model_version == version and first.rows == USERS
    assert second.replaced == USERS  # the same key's rows, replaced
    assert len(rows_first) == len(rows_second) == USERS
    assert rows_first.equals(rows_second)
    with db.connect(db.target(s), s) as conn:
        count, scored_at = conn.execute(
            "SELECT count(*), min(scored_at) FROM predictions WHERE as_of = %s AND model_version = %s",
            (JAN, version),
        ).fetchone()
    assert count == USERS and scored_at == second.scored_at

    # The stored scores are the registered pipeline's on the training-set features of the month.
    data = training_set(s, JAN, "churn_v1")
    pipeline = mlflow.sklearn.load_model(f"models:/{s.model_name}/{version}")
    reference = pipeline.predict_proba(to_model_input(data.frame, feature_spec("churn_v1")))[:, 1]
    assert list(rows_second["user_id"]) == list(data.frame["user_id"])
    assert np.max(np.abs(rows_second["probability"].to_numpy() - reference)) <= 1e-5
    assert (rows_second["prediction"] == (rows_second["probability"] >= first.threshold)).all()


def test_drift_on_the_real_months(monitored: TrainedStack, drift: DriftResult) -> None:
    s = monitored.settings
    spec = feature_spec("churn_v1")
    assert list(drift.features) == list(spec.names)  # the service's features: no ids, no timestamps
    assert "rebuffer_events_7d" in drift.drifted_features
    assert drift.features["rebuffer_events_7d"].drifted
    assert drift.drift_share == pytest.approx(len(drift.drifted_features) / 14)
    assert not drift.features["months_active"].drifted  # identical in both months

    # Each month's own labels: 1,869 vs 1,701 churners among 7,043 users.
    target = drift.target
    assert target is not None
    assert target.reference_rate == pytest.approx(1869 / USERS)
    assert target.current_rate == pytest.approx(1701 / USERS)
    assert target.difference == pytest.approx((1701 - 1869) / USERS) and target.difference != 0
    assert 0 < target.p_value < 0.05 and target.drifted

    # Prediction drift from the production model's batch scores of both snapshots.
    prediction = drift.prediction
    assert prediction is not None and prediction.model_version == monitored.baseline.version
    assert 0 < prediction.reference_mean < 1 and 0 < prediction.current_mean < 1
    for as_of in (JAN, FEB):
        assert len(load_scores(s, as_of, monitored.baseline.version)) == USERS

    assert drift.html_path == s.reports_dir / "drift_2024-01-31_2024-02-29.html"
    assert drift.html_path.stat().st_size > 10_000
    saved = json.loads(drift.json_path.read_text())
    assert saved["summary"]["drift_share"] == drift.drift_share and saved["evidently"]["metrics"]

    use_mlflow(s)
    client = mlflow.MlflowClient()
    run = client.get_run(drift.mlflow_run_id)
    assert run.data.metrics["drift_share"] == pytest.approx(drift.drift_share)
    assert run.data.metrics["target_drift"] == pytest.approx(target.difference)
    assert run.data.metrics["prediction_drift"] == pytest.approx(prediction.score)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    assert artifacts == {f"drift/{drift.html_path.name}", f"drift/{drift.json_path.name}"}
    assert latest_drift_share(s) == pytest.approx(drift.drift_share)


def _fitted_on(settings: Settings, as_of: date, service: str) -> set[str]:
    frame = training_set(settings, as_of, service).frame
    return set(frame["user_id"][~holdout_mask(frame["user_id"])])


def test_drift_above_threshold_trains_and_promotes_a_better_candidate(monitored: TrainedStack) -> None:
    s = monitored.settings
    baseline = monitored.baseline.version
    promote(s, version=baseline, force=True, by="test_monitoring")

    decision = monitor_and_retrain(s, JAN, FEB, threshold=0.0)  # any drift triggers

    assert decision.retrained and decision.promoted, decision.reason
    assert decision.production_version == baseline and production_version(s) == decision.candidate_version
    assert decision.candidate_auc - decision.production_auc >= s.promotion_margin
    use_mlflow(s)
    client = mlflow.MlflowClient()
    tags = client.get_model_version(s.model_name, str(decision.candidate_version)).tags
    assert tags["as_of"] == FEB.isoformat() and tags["feature_service"] == "churn_v2"
    assert tags["model_type"] == "logreg" and tags["retrain_decision"] == "promoted"
    assert tags["gate_decision"] == "promoted" and tags["leakage_check"].startswith("passed")
    assert "drift share" in tags["retrain_reason"] and tags["retrain_drift_run_id"] == decision.drift_run_id
    assert client.get_run(decision.drift_run_id).data.tags["retrain_decision"] == "promoted"

    # No leakage: recomputed from the training sets, the gate's users (hold-out of February) are
    # disjoint from the users either model was fitted on, and the same hash set in both months.
    feb = training_set(s, FEB, "churn_v2").frame["user_id"]
    gate = set(feb[holdout_mask(feb)])
    jan = training_set(s, JAN, "churn_v1").frame["user_id"]
    assert gate == set(jan[holdout_mask(jan)]) and len(gate) == decision.holdout_users
    assert not gate & _fitted_on(s, JAN, "churn_v1")  # production (baseline)
    assert not gate & _fitted_on(s, FEB, "churn_v2")  # candidate
    split = gate_split(s, FEB, [decision.candidate_version, baseline])
    assert split.holdout == gate and split.overlaps() == {decision.candidate_version: 0, baseline: 0}
    assert split.training[baseline] == _fitted_on(s, JAN, "churn_v1")


def test_a_candidate_that_is_not_better_enough_is_not_promoted(
    monitored: TrainedStack, drift: DriftResult
) -> None:
    s = monitored.settings.model_copy(update={"promotion_margin": 0.5})
    before = production_version(s)

    decision = monitor_and_retrain(s, JAN, FEB, threshold=0.0, drift=drift)

    assert decision.retrained and not decision.promoted
    assert production_version(s) == before == decision.production_version
    assert "does not beat production" in decision.reason
    use_mlflow(s)
    tags = mlflow.MlflowClient().get_model_version(s.model_name, str(decision.candidate_version)).tags
    assert tags["retrain_decision"] == "kept production" and tags["gate_decision"] == "rejected"
    assert tags["leakage_check"].startswith("passed")


def test_drift_below_threshold_trains_nothing(monitored: TrainedStack, drift: DriftResult) -> None:
    s = monitored.settings
    versions, before = _versions(s), production_version(s)

    decision = monitor_and_retrain(s, JAN, FEB, threshold=0.99, drift=drift)

    assert not decision.retrained and not decision.promoted and decision.candidate_version is None
    assert "no retraining" in decision.reason and f"{drift.drift_share:.3f}" in decision.reason
    assert _versions(s) == versions and production_version(s) == before
    use_mlflow(s)
    assert mlflow.MlflowClient().get_run(drift.mlflow_run_id).data.tags["retrain_decision"] == "skipped"
