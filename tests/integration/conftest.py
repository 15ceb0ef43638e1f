"""Trained models shared by the registry and API tests (training is the expensive part: once per session)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pytest

from streamflow.settings import Settings
from tests.conftest import Months

JAN, FEB = date(2024, 1, 31), date(2024, 2, 29)


@dataclass(frozen=True)
class TrainedStack:
    settings: Settings
    months: Months  # what settings' database holds
    baseline: object  # TrainResult: course forest on churn_v1
    candidate: object  # TrainResult: logistic regression on churn_v2
    candidate_again: object  # the same training repeated (reproducibility)


@pytest.fixture(scope="session")
def trained(stack_settings: Settings, months: Months) -> TrainedStack:
    from streamflow.features.apply import apply
    from streamflow.training.train import train_model

    apply(stack_settings)
    baseline = train_model(JAN, "baseline", seed=42, feature_service="churn_v1", settings=stack_settings)
    candidate = train_model(JAN, "logreg", seed=42, feature_service="churn_v2", settings=stack_settings)
    again = train_model(JAN, "logreg", seed=42, feature_service="churn_v2", settings=stack_settings)
    return TrainedStack(stack_settings, months, baseline, candidate, again)
