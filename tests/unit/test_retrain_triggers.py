"""The retraining decision rule alone, on hand-made figures (no database, no models)."""

from __future__ import annotations

from datetime import date
from types import SimpleNamespace

import pytest

from streamflow.monitoring.drift import TargetDrift
from streamflow.monitoring.retrain import HoldoutAuc, evaluate_triggers

JAN, FEB = date(2024, 1, 31), date(2024, 2, 29)


def test_evaluate_triggers_reports_each_trigger_with_its_figures() -> None:
    """The decision rule alone: each trigger fires on its own, at its limit as documented."""
    target = TargetDrift(0.26, 0.24, -0.02, 0.01, 0.05, True, 7043, 7043)
    fake = SimpleNamespace(
        drift_share=0.3,
        drifted_features=("a",) * 3,
        features=dict.fromkeys("abcdefghij"),
        feature_service="churn_v1",
        target=target,
        current=FEB,
    )
    auc = HoldoutAuc(version=1, trained_as_of=JAN, recorded=0.84, current=0.47)
    assert auc.drop == pytest.approx(0.37)

    fired = {t.name: t.fired for t in evaluate_triggers(fake, 0.3, 0.05, auc, 0.05)}
    assert fired == {"feature_drift": True, "target_drift": True, "holdout_auc": True}  # share reaches 0.3
    fired = {t.name: t.fired for t in evaluate_triggers(fake, 0.31, 0.01, auc, 0.38)}
    assert fired == {"feature_drift": False, "target_drift": False, "holdout_auc": False}  # p not < alpha
    fired = {t.name: t.fired for t in evaluate_triggers(fake, 0.31, 0.01, auc, 0.36)}
    assert fired == {"feature_drift": False, "target_drift": False, "holdout_auc": True}

    no_labels = SimpleNamespace(**(vars(fake) | {"target": None}))
    triggers = evaluate_triggers(no_labels, 0.5, 0.05, None, 0.05, auc_missing="not measured (no labels)")
    assert [(t.name, t.fired, t.value) for t in triggers] == [
        ("feature_drift", False, 0.3),
        ("target_drift", False, None),
        ("holdout_auc", False, None),
    ]
    assert triggers[2].detail == "hold-out ROC-AUC not measured (no labels)"
