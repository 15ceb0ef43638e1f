"""Training runs in MLflow, and promotion/rollback/gate on the registry alias (real MLflow on PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import threading
from pathlib import Path

import mlflow
import pytest

from streamflow.registry import PromotionError, list_versions, production_version, promote, rollback
from streamflow.training.tracking import use_mlflow
from tests.integration.conftest import TrainedStack


@pytest.fixture
def client(trained: TrainedStack) -> mlflow.MlflowClient:
    use_mlflow(trained.settings)
    return mlflow.MlflowClient()


def test_run_records_params_metrics_artifacts_and_lineage(
    trained: TrainedStack, client: mlflow.MlflowClient
) -> None:
    run = client.get_run(trained.baseline.run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["as_of"] == "2024-01-31" and params["label_as_of"] == "2024-01-31"
    assert params["label_horizon"] == "0" and params["model_type"] == "baseline" and params["seed"] == "42"
    assert params["feature_service"] == "churn_v1" and params["rows"] == str(
        trained.months.users("2024-01-31")
    )
    for name in ("roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy", "train_time_seconds"):
        assert name in metrics, name
    assert len(tags["data_fingerprint"]) == 64 and tags["git_commit"]
    assert tags["version.scikit-learn"] and tags["version.feast"]
    # The environment: the lock `make install` installed (its copy in the venv), Python, platform.
    lock = Path(sys.prefix) / "streamflow.lock"
    want = hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else "unlocked"
    assert (tags["lock_sha256"], tags["python_version"]) == (want, platform.python_version())
    assert tags["platform"].startswith("linux")
    version = client.get_model_version("streamflow_churn", str(trained.baseline.version)).tags
    assert {k: version[k] for k in ("lock_sha256", "python_version", "platform")} == {
        k: tags[k] for k in ("lock_sha256", "python_version", "platform")
    }
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"feature_schema.json", "plots", "onnx"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {
        f"plots/{n}"
        for n in ("roc_curve.png", "pr_curve.png", "confusion_matrix.png", "feature_importance.png")
    }
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="feature_schema.json")
    schema = json.loads(Path(path).read_text())
    assert schema["categorical"] == ["net_service"] and len(schema["features"]) == 14
    assert [i.dataset.digest for i in run.inputs.dataset_inputs] == [tags["data_fingerprint"][:36]]


# Hold-out ROC-AUC floors (baseline, candidate). Real: misaligned labels (month_001's on month_000's
# features) land near 0.62. Generated: lower floors, as 2,000 users give a weaker fit than 7,043.
SIGNAL_FLOORS = {"real": (0.78, 0.84), "generated": (0.76, 0.79)}


def test_month_aligned_labels_give_the_baseline_real_signal(trained: TrainedStack) -> None:
    baseline, candidate = SIGNAL_FLOORS[trained.months.source]
    assert trained.baseline.metrics["roc_auc"] > baseline
    assert trained.candidate.metrics["roc_auc"] > candidate


def test_same_as_of_and_seed_reproduce_metrics_and_fingerprint(trained: TrainedStack) -> None:
    assert trained.candidate_again.fingerprint == trained.candidate.fingerprint
    assert trained.candidate_again.metrics == trained.candidate.metrics
    assert trained.candidate_again.threshold == trained.candidate.threshold


def test_versions_are_registered_with_their_feature_service(
    trained: TrainedStack, client: mlflow.MlflowClient
) -> None:
    mv = client.get_model_version(trained.settings.model_name, str(trained.candidate.version))
    assert mv.tags["feature_service"] == "churn_v2" and mv.tags["as_of"] == "2024-01-31"
    assert float(mv.tags["threshold"]) == trained.candidate.threshold


def test_gate_promote_reject_force_rollback(trained: TrainedStack, client: mlflow.MlflowClient) -> None:
    s, name = trained.settings, trained.settings.model_name
    base, cand = trained.baseline.version, trained.candidate.version
    if production_version(s) is not None:  # other modules of the session promoted versions before
        client.delete_registered_model_alias(name, s.production_alias)

    first = promote(s, version=base, by="test")
    assert first.promoted and first.reason == "no production version yet" and production_version(s) == base

    better = promote(s, version=cand, by="test")
    assert better.promoted and better.previous_version == base
    assert better.candidate_auc - better.production_auc >= s.promotion_margin
    tags = client.get_model_version(name, str(cand)).tags
    assert tags["promoted_by"] == "test" and tags["previous_version"] == str(base) and tags["promoted_at"]
    assert "beats production" in tags["reason"]

    worse = promote(s, version=base, by="test")
    assert not worse.promoted and production_version(s) == cand
    assert client.get_model_version(name, str(base)).tags["gate_decision"] == "rejected"

    forced = promote(s, version=base, force=True, by="test")
    assert forced.promoted and production_version(s) == base

    back = rollback(s, by="test")
    assert back.version == cand and production_version(s) == cand
    assert [r.version for r in list_versions(s) if "production" in r.aliases] == [cand]


def test_alias_set_outside_streamflow_is_honoured(trained: TrainedStack, client: mlflow.MlflowClient) -> None:
    """Setting the alias in the MLflow UI (the same API call) is what serving and `models` see."""
    s = trained.settings
    client.set_registered_model_alias(s.model_name, s.production_alias, str(trained.candidate_again.version))
    assert production_version(s) == trained.candidate_again.version
    assert [r.version for r in list_versions(s) if s.production_alias in r.aliases] == [
        trained.candidate_again.version
    ]


def test_concurrent_promotions_leave_one_consistent_production(trained: TrainedStack) -> None:
    s = trained.settings
    before = production_version(s)
    versions = [trained.baseline.version, trained.candidate.version, trained.candidate_again.version] * 2
    decisions, errors = [], []

    def run(v: int) -> None:
        try:
            decisions.append(promote(s, version=v, force=True, by=f"thread-{v}"))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(decisions) == len(versions)
    holders = [r.version for r in list_versions(s) if s.production_alias in r.aliases]
    assert len(holders) == 1
    # Serialised: the promotions form one chain from the old production to the final one, each having
    # seen the result of the one before it.
    transitions = [(d.previous_version, d.version) for d in decisions if d.promoted]
    current = before
    while transitions:
        step = next((t for t in transitions if t[0] == current), None)
        assert step is not None, f"promotion from {current} missing in {transitions}"
        transitions.remove(step)
        current = step[1]
    assert current == holders[0]


def test_promote_errors_are_clear(trained: TrainedStack) -> None:
    with pytest.raises(PromotionError, match="has no version 999"):
        promote(trained.settings, version=999)
    with pytest.raises(PromotionError, match="--version or ask for --best"):
        promote(trained.settings)
