"""Fixtures for the model tests: the real month_000 export read straight from the shared CSVs (never
copied into the repository), and fitted models shared by test_models.py and test_fast_model.py."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd
import pytest

from streamflow.features.definitions import feature_spec
from streamflow.training.models import FittedModel, fit_model, holdout_mask
from tests.conftest import SEEDS, require_seeds

FILES = ("users", "subscriptions", "usage_agg_30d", "payments_agg_90d", "support_agg_90d", "labels")
SEED = 0


@functools.cache
def _load_month(folder: str) -> pd.DataFrame:
    frame: pd.DataFrame | None = None
    for name in FILES:
        part = pd.read_csv(SEEDS / folder / f"{name}.csv", dtype={"user_id": str})
        frame = part if frame is None else frame.merge(part, on="user_id", how="inner", validate="1:1")
    assert frame is not None
    for column in frame.columns:
        values = frame[column]
        # Blank booleans (plan_stream_* without internet) become None, as Feast returns them.
        if values.dtype == object and set(values.dropna().unique()) <= {True, False}:
            frame[column] = values.astype(object).where(values.notna(), None)
    return frame


def load_month(folder: str = "month_000") -> pd.DataFrame:
    """All six CSVs of a month joined on user_id, feature columns typed as Feast returns them
    (ints, floats, str, and True/False/None booleans). A fresh copy: callers may modify it."""
    require_seeds()
    return _load_month(folder).copy()


@pytest.fixture(scope="session")
def month0() -> pd.DataFrame:
    return load_month("month_000")


@pytest.fixture(scope="session")
def is_holdout(month0: pd.DataFrame) -> np.ndarray:
    return holdout_mask(month0["user_id"])


@pytest.fixture(scope="session")
def train_frame(month0: pd.DataFrame, is_holdout: np.ndarray) -> pd.DataFrame:
    return month0[~is_holdout].reset_index(drop=True)


@pytest.fixture(scope="session")
def holdout_frame(month0: pd.DataFrame, is_holdout: np.ndarray) -> pd.DataFrame:
    return month0[is_holdout].reset_index(drop=True)


def fit(model_type: str, service: str, train: pd.DataFrame, seed: int = SEED, **kwargs: Any) -> FittedModel:
    return fit_model(model_type, train, train["churn_label"], feature_spec(service), seed, **kwargs)


@pytest.fixture(scope="session")
def baseline_v1(train_frame: pd.DataFrame) -> FittedModel:
    """The course baseline (random forest) on the 14 churn_v1 features."""
    return fit("baseline", "churn_v1", train_frame)


@pytest.fixture(scope="session")
def logreg_v2(train_frame: pd.DataFrame) -> FittedModel:
    """The candidate: tuned logistic regression on the 20 churn_v2 features (full grid, 5 folds)."""
    return fit("logreg", "churn_v2", train_frame)


@pytest.fixture(scope="session")
def gbm_v2(train_frame: pd.DataFrame) -> FittedModel:
    """Gradient boosting on churn_v2 at its default grid point (the one its grid selects here), 3 folds
    for the threshold: the tree-ensemble candidate without the cost of the full grid."""
    return fit("gbm", "churn_v2", train_frame, param_grid={}, cv_folds=3)
