"""Batch scoring, drift and drift-gated retraining on each source of months (real PostgreSQL, Feast, MLflow)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import date

import mlflow
import numpy as np
import pytest
from click.testing import Result

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

# Where the sources differ by nature. The real months hold the same users with the same tenure in
# both, and February's labels are another month's churn: the churn rate moves significantly and
# January's model loses hold-out ROC-AUC on them. Generated months replace churners with newcomers
# (tenure drifts) and draw each month's churn from its features (the rate moves little, the model holds).
SAME_USERS = {"real": True, "generated": False}
CHURN_RATE_DRIFTS = {"real": True, "generated": False}
AUC_DROPS_BEYOND_THE_LIMIT = {"real": True, "generated": False}


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
    users = monitored.months.users("2024-01-31")
    first = score_snapshot(s, JAN)
    rows_first = load_scores(s, JAN, version)
    second = score_snapshot(s, JAN)
    rows_second = load_scores(s, JAN, version)

    assert first.model_version == second.model_version == version and first.rows == users
    assert second.replaced == users  # the same key's rows, replaced
    assert len(rows_first) == len(rows_second) == users
    assert rows_first.equals(rows_second)
    with db.connect(db.target(s), s) as conn:
        count, scored_at = conn.execute(
            "SELECT count(*), min(scored_at) FROM predictions WHERE as_of = %s AND model_version = %s",
            (JAN, version),
        ).fetchone()
    assert count == users and scored_at == second.scored_at

    # The stored scores are the registered pipeline's on the training-set features of the month.
    data = training_set(s, JAN, "churn_v1")
    pipeline = mlflow.sklearn.load_model(f"models:/{s.model_name}/{version}")
    reference = pipeline.predict_proba(to_model_input(data.frame, feature_spec("churn_v1")))[:, 1]
    assert list(rows_second["user_id"]) == list(data.frame["user_id"])
    assert np.max(np.abs(rows_second["probability"].to_numpy() - reference)) <= 1e-5
    assert (rows_second["prediction"] == (rows_second["probability"] >= first.threshold)).all()


def test_drift_between_the_months(monitored: TrainedStack, drift: DriftResult) -> None:
    s, months = monitored.settings, monitored.months
    spec = feature_spec("churn_v1")
    assert list(drift.features) == list(spec.names)  # the service's features: no ids, no timestamps
    assert "rebuffer_events_7d" in drift.drifted_features
    assert drift.drifted_features == tuple(n for n, f in drift.features.items() if f.drifted)
    assert drift.drift_share == pytest.approx(len(drift.drifted_features) / 14)
    # The real months' tenure is identical in both: no drift. Newcomers move the generated one.
    assert drift.features["months_active"].drifted is not SAME_USERS[months.source]

    # Each month's own labels (real: 1,869 vs 1,701 churners among 7,043 users).
    target = drift.target
    assert target is not None
    jan, feb = (months.positives(m) / months.users(m) for m in ("2024-01-31", "2024-02-29"))
    assert (target.reference_rate, target.current_rate) == (pytest.approx(jan), pytest.approx(feb))
    assert target.difference == pytest.approx(feb - jan) and target.difference != 0
    assert target.alpha == s.target_drift_alpha == 0.05
    assert 0 < target.p_value < 1 and target.drifted == (target.p_value < target.alpha)
    assert target.drifted is CHURN_RATE_DRIFTS[months.source]

    # Prediction drift from the production model's batch scores of both snapshots.
    prediction = drift.prediction
    assert prediction is not None and prediction.model_version == monitored.baseline.version
    assert 0 < prediction.reference_mean < 1 and 0 < prediction.current_mean < 1
    for as_of in (JAN, FEB):
        assert len(load_scores(s, as_of, monitored.baseline.version)) == months.users(as_of.isoformat())

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


def test_target_drift_retrains_though_feature_drift_is_under_the_threshold(
    monitored: TrainedStack, drift: DriftResult
) -> None:
    """Few features drift, but the churn rate of February's labels differs from January's; that alone
    retrains, and the candidate beats January's model on February. The real months do at the default
    alpha; the generated ones' smaller move takes an alpha just above its p-value."""
    s = monitored.settings
    baseline = monitored.baseline.version
    promote(s, version=baseline, force=True, by="test_monitoring")
    assert drift.drift_share < s.drift_threshold  # feature drift alone would train nothing
    assert drift.target is not None
    alpha = s.target_drift_alpha if drift.target.drifted else min(1.0, 2 * drift.target.p_value)
    assert drift.target.p_value < alpha

    # Default threshold; the ROC-AUC trigger is measured but switched off (a drop can't exceed 1),
    # so the target drift is the one trigger that fires.
    decision = monitor_and_retrain(s, JAN, FEB, target_alpha=alpha, auc_drop=1.0, drift=drift)

    assert decision.retrained and decision.promoted, decision.reason
    assert decision.fired == ("target_drift",)
    triggers = {t.name: t for t in decision.triggers}
    assert set(triggers) == {"feature_drift", "target_drift", "holdout_auc"}
    assert triggers["feature_drift"].value == drift.drift_share and not triggers["feature_drift"].fired
    target = triggers["target_drift"]
    assert target.value == drift.target.p_value == decision.target_drift_p_value  # reused, not recomputed
    assert target.limit == alpha == decision.target_alpha
    assert f"p = {drift.target.p_value:.2g} < alpha {alpha}" in target.detail
    assert decision.reason.startswith("retrained on target_drift: target drift: churn rate")
    # Production's (January's) hold-out ROC-AUC on February, next to the one recorded at training;
    # on the real months this trigger would fire too at the default limit.
    auc = triggers["holdout_auc"]
    recorded = float(monitored.baseline.metrics["roc_auc"])
    assert decision.production_auc_recorded == pytest.approx(recorded)
    assert decision.production_auc_current == decision.production_auc  # the gate's own figure
    assert auc.value == pytest.approx(recorded - decision.production_auc_current)
    assert not auc.fired
    assert (auc.value > s.retrain_auc_drop) is AUC_DROPS_BEYOND_THE_LIMIT[monitored.months.source]

    assert decision.production_version == baseline and production_version(s) == decision.candidate_version
    assert decision.candidate_auc - decision.production_auc >= s.promotion_margin
    use_mlflow(s)
    client = mlflow.MlflowClient()
    tags = client.get_model_version(s.model_name, str(decision.candidate_version)).tags
    assert tags["as_of"] == FEB.isoformat() and tags["feature_service"] == "churn_v2"
    assert tags["model_type"] == "logreg" and tags["retrain_decision"] == "promoted"
    assert tags["gate_decision"] == "promoted" and tags["leakage_check"].startswith("passed")
    assert tags["retrain_triggers"] == "target_drift" and "target drift" in tags["retrain_reason"]
    assert tags["retrain_drift_run_id"] == decision.drift_run_id
    run = client.get_run(decision.drift_run_id).data
    assert run.tags["retrain_decision"] == "promoted" and run.tags["retrain_triggers"] == "target_drift"
    assert run.tags["retrain_trigger.target_drift"] == target.detail
    assert run.tags["retrain_trigger.feature_drift"] == triggers["feature_drift"].detail
    assert run.metrics["target_drift_p_value"] == pytest.approx(drift.target.p_value)
    assert run.metrics["production_holdout_auc_drop"] == pytest.approx(auc.value)

    # No leakage: recomputed from the training sets, the gate's users (hold-out of February) are
    # disjoint from the users either model was fitted on, and the same hash split in both months.
    feb = training_set(s, FEB, "churn_v2").frame["user_id"]
    gate = set(feb[holdout_mask(feb)])
    jan = training_set(s, JAN, "churn_v1").frame["user_id"]
    assert gate & set(jan) == set(jan[holdout_mask(jan)]) & set(feb) and len(gate) == decision.holdout_users
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

    # Only the feature-drift trigger is on, and any drift reaches a threshold of 0.
    decision = monitor_and_retrain(s, JAN, FEB, threshold=0.0, target_alpha=0.0, auc_drop=1.0, drift=drift)

    assert decision.retrained and not decision.promoted
    assert decision.fired == ("feature_drift",) and "feature drift share" in decision.reason
    assert production_version(s) == before == decision.production_version
    assert "does not beat production" in decision.reason
    use_mlflow(s)
    tags = mlflow.MlflowClient().get_model_version(s.model_name, str(decision.candidate_version)).tags
    assert tags["retrain_decision"] == "kept production" and tags["gate_decision"] == "rejected"
    assert tags["retrain_triggers"] == "feature_drift" and tags["leakage_check"].startswith("passed")


def test_no_trigger_fires_trains_nothing(monitored: TrainedStack, drift: DriftResult) -> None:
    s = monitored.settings
    versions, before = _versions(s), production_version(s)

    decision = monitor_and_retrain(s, JAN, FEB, threshold=0.99, target_alpha=0.0, auc_drop=1.0, drift=drift)

    assert not decision.retrained and not decision.promoted and decision.candidate_version is None
    assert decision.fired == () and decision.reason.startswith("no retraining: ")
    assert (
        f"feature drift share {drift.drift_share:.3f}" in decision.reason
        and "< threshold 0.99" in decision.reason
    )
    assert f"p = {drift.target.p_value:.2g} >= alpha 0.0" in decision.reason
    assert "hold-out ROC-AUC" in decision.reason and "<= margin 1.0" in decision.reason
    assert _versions(s) == versions and production_version(s) == before
    use_mlflow(s)
    run = mlflow.MlflowClient().get_run(drift.mlflow_run_id).data
    assert run.tags["retrain_decision"] == "skipped" and run.tags["retrain_triggers"] == "none"
    assert run.tags["retrain_reason"] == decision.reason


@pytest.fixture
def cli(monitored: TrainedStack, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run `streamflow ...` in-process on the test stack."""
    from typer.testing import CliRunner

    from streamflow.cli import app, monitoring, root

    def run(*args: str, settings: Settings | None = None) -> Result:
        for module in (root, monitoring):
            monkeypatch.setattr(module, "get_settings", lambda: settings or monitored.settings)
        return CliRunner().invoke(app, list(args))

    return run


def test_cli_errors_exit_2_with_one_line(monitored: TrainedStack, cli: Callable[..., Result]) -> None:
    s = monitored.settings
    use_mlflow(s)
    client = mlflow.MlflowClient()
    before = production_version(s)
    assert before is not None
    client.delete_registered_model_alias(s.model_name, s.production_alias)
    try:
        result = cli("score", "--as-of", FEB.isoformat())
    finally:
        client.set_registered_model_alias(s.model_name, s.production_alias, str(before))
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: no version of {s.model_name} holds @{s.production_alias}: promote a version first"
        " (streamflow promote), or pass --version"
    ]
    assert result.stdout == "" and "Traceback" not in result.output

    cases = {
        f"score --as-of {FEB} --version 999": f"--version: {s.model_name} has no version 999",
        f"drift --reference 2023-12-31 --current {FEB}": "no snapshot at as_of 2023-12-31",
        f"monitor --reference 2023-12-31 --current {FEB}": "no snapshot at as_of 2023-12-31",
        f"drift --reference {JAN} --current {FEB} --feature-service nope": "unknown feature service 'nope'",
        f"monitor --reference {JAN} --current {FEB} --feature-service nope": "unknown feature service 'nope'",
    }
    for args, message in cases.items():
        result = cli(*args.split())
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, lines)


def test_cli_monitor_says_why_nothing_was_retrained(
    monitored: TrainedStack, cli: Callable[..., Result]
) -> None:
    s = monitored.settings.model_copy(update={"target_drift_alpha": 0.0, "retrain_auc_drop": 1.0})
    versions = _versions(s)

    result = cli(*f"monitor --reference {JAN} --current {FEB} --threshold 0.99".split(), settings=s)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("no retraining: feature drift share "), lines
    assert "< threshold 0.99" in lines[0] and ">= alpha 0.0" in lines[0] and "<= margin 1.0" in lines[0]
    assert _versions(s) == versions
