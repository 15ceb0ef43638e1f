"""Fixtures for the model tests: a month's export joined in memory, straight from its CSVs (no
database), and fitted models shared by test_models.py and test_fast_model.py.

Every data fixture runs on a month made by the generator (always there) and on the real month_000
export when ../shared has it (never copied into the repository).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

from streamflow.data.generate import generate_months
from streamflow.features.definitions import feature_spec
from streamflow.training.models import FittedModel, fit_model, holdout_mask
from tests.conftest import SEEDS, SOURCES

FEATURE_FILES = ("users", "subscriptions", "usage_agg_30d", "payments_agg_90d", "support_agg_90d")
SEED = 0
GENERATED_USERS = 7_043  # the real months' size


def read_month(folder: Path | str, labels_folder: Path | str | None = None) -> pd.DataFrame:
    """The five feature files of a month joined on user_id, with the labels of ``labels_folder``
    (default: the same month; another month's labels = a later label horizon, users in both only).

    Feature columns typed as Feast returns them: ints, floats, str, and True/False/None booleans
    (the blank plan_stream_* of users without internet); churn_label int 0/1; sorted by user_id.
    Arrow reads and joins: a 1M-user month takes ~5 s.
    """
    folder = Path(folder)
    options = pcsv.ConvertOptions(column_types={"user_id": pa.string()}, strings_can_be_null=False)
    table: pa.Table | None = None
    for name in FEATURE_FILES:
        part = pcsv.read_csv(folder / f"{name}.csv", convert_options=options)
        table = part if table is None else table.join(part, "user_id", join_type="inner")
    assert table is not None
    labels = pcsv.read_csv(Path(labels_folder or folder) / "labels.csv", convert_options=options)
    # Arrow sorts strings by bytes: Python's order, as training sets are sorted.
    table = table.join(labels, "user_id", join_type="inner").sort_by("user_id")
    frame = table.to_pandas()  # bool columns with nulls come out as object True/False/None
    frame["churn_label"] = frame["churn_label"].astype("int64")
    return frame


@pytest.fixture(scope="session")
def generated_months(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two generated months of 7,043 users (the generator is seeded: the same files every run)."""
    out = tmp_path_factory.mktemp("generated")
    return [folder for folder, _ in generate_months(out, GENERATED_USERS, 2, seed=11)]


@pytest.fixture(scope="session", params=SOURCES)
def source(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def months(source: str, request: pytest.FixtureRequest) -> list[Path]:
    if source == "generated":
        return request.getfixturevalue("generated_months")
    return [SEEDS / "month_000", SEEDS / "month_001"]


@pytest.fixture(scope="session")
def month0(months: list[Path]) -> pd.DataFrame:
    return read_month(months[0])


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
    """The course baseline (bounded random forest) on the 14 churn_v1 features."""
    return fit("baseline", "churn_v1", train_frame)


@pytest.fixture(scope="session")
def logreg_v2(train_frame: pd.DataFrame) -> FittedModel:
    """The candidate: tuned logistic regression on the 20 churn_v2 features (full grid, 5 folds)."""
    return fit("logreg", "churn_v2", train_frame)


@pytest.fixture(scope="session")
def gbm_v2(train_frame: pd.DataFrame) -> FittedModel:
    """Histogram gradient boosting on churn_v2 at its default grid point, 3 folds for the threshold:
    the tree-ensemble candidate without the cost of the full grid."""
    return fit("gbm", "churn_v2", train_frame, param_grid={}, cv_folds=3)
