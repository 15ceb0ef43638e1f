"""Point-in-time training sets on a real PostgreSQL through Feast's get_historical_features."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pandas as pd
import pytest
from feast import FeatureStore

from streamflow.features.apply import apply
from streamflow.features.config import feature_store
from streamflow.features.definitions import feature_spec
from streamflow.features.snapshots import NoSnapshotError
from streamflow.months import add_months
from streamflow.settings import Settings
from streamflow.training.dataset import TrainingSet, available_as_of, training_set
from tests.conftest import MONTHS

JAN, FEB = date(2024, 1, 31), date(2024, 2, 29)
USER = "7590-VHVEG"


@pytest.fixture(scope="module")
def store(stack_settings: Settings) -> FeatureStore:
    store = feature_store(stack_settings)
    apply(stack_settings, store)
    return store


@pytest.fixture(scope="module")
def jan(stack_settings: Settings, store: FeatureStore) -> TrainingSet:
    return training_set(stack_settings, JAN, store=store)


def csv_month(as_of: str) -> pd.DataFrame:
    folder = MONTHS[as_of]
    frames = [
        pd.read_csv(folder / f"{name}.csv", float_precision="round_trip")
        for name in ("subscriptions", "usage_agg_30d", "labels")
    ]
    out = frames[0]
    for frame in frames[1:]:
        out = out.merge(frame, on="user_id", validate="one_to_one")
    return out.sort_values("user_id").reset_index(drop=True)


def test_available_as_of(stack_settings: Settings) -> None:
    assert available_as_of(stack_settings) == [JAN, FEB]


def test_training_set_at_january(jan: TrainingSet) -> None:
    df = jan.frame
    assert (jan.rows, jan.positives) == (7043, 1869)
    assert list(df.columns) == ["user_id", "event_timestamp", *feature_spec().names, "churn_label"]
    assert df["user_id"].is_monotonic_increasing and df["user_id"].is_unique
    assert str(df["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert (df["event_timestamp"] == pd.Timestamp(datetime(2024, 1, 31, tzinfo=UTC))).all()
    assert set(df["churn_label"].unique()) == {0, 1} and df["churn_label"].dtype == "int64"
    assert jan.metadata() | {"fingerprint": None} == {
        "as_of": "2024-01-31",
        "label_as_of": "2024-01-31",
        "label_horizon_months": 0,
        "service": "churn_v1",
        "rows": 7043,
        "positives": 1869,
        "features": list(feature_spec().names),
        "fingerprint": None,
        "revisions": {"2024-01-31": 1},  # the month read (no earlier month in the feature window)
    }
    # Every value is January's export: nothing from February leaked in.
    want = csv_month("2024-01-31")
    assert df["user_id"].tolist() == want["user_id"].tolist()
    for column in ("watch_hours_30d", "monthly_fee", "months_active", "skips_7d"):
        assert df[column].astype(float).tolist() == want[column].astype(float).tolist(), column
    assert df["churn_label"].tolist() == want["churn_label"].astype(int).tolist()
    row = df.set_index("user_id").loc[USER]
    assert row["monthly_fee"] == 29.85 and row["watch_hours_30d"] == 24.483650766787413


def test_training_set_at_february(stack_settings: Settings, store: FeatureStore) -> None:
    feb = training_set(stack_settings, FEB, store=store)
    assert (feb.rows, feb.positives) == (7043, 1701)
    want = csv_month("2024-02-29")
    assert feb.frame["watch_hours_30d"].tolist() == want["watch_hours_30d"].tolist()


def test_label_horizon_takes_later_labels_and_keeps_features(
    stack_settings: Settings, store: FeatureStore, jan: TrainingSet
) -> None:
    ahead = training_set(stack_settings, JAN, label_horizon=1, store=store)
    assert (ahead.as_of, ahead.label_as_of, ahead.positives) == (JAN, FEB, 1701)
    features = list(feature_spec().names)
    pd.testing.assert_frame_equal(ahead.frame[features], jan.frame[features])
    assert ahead.fingerprint != jan.fingerprint
    with pytest.raises(NoSnapshotError, match=r"no labels at 2024-03-31"):
        training_set(stack_settings, FEB, label_horizon=1, store=store)


def test_point_in_time_correctness(store: FeatureStore) -> None:
    """A row at 2024-02-15 sees January's snapshot, never February's (dated after the row)."""
    jan_hours = csv_month("2024-01-31").set_index("user_id").loc[USER, "watch_hours_30d"]
    feb_hours = csv_month("2024-02-29").set_index("user_id").loc[USER, "watch_hours_30d"]
    assert jan_hours != feb_hours
    entity_df = pd.DataFrame(
        {
            "user_id": [USER] * 4,
            "event_timestamp": pd.to_datetime(
                ["2024-01-30", "2024-01-31", "2024-02-15", "2024-02-29"], utc=True
            ),
        }
    )
    got = (
        store.get_historical_features(entity_df=entity_df, features=store.get_feature_service("churn_v1"))
        .to_df()
        .sort_values("event_timestamp")
    )
    hours = got["watch_hours_30d"].tolist()
    assert pd.isna(hours[0])  # before the first snapshot: nothing known yet
    assert hours[1:] == [jan_hours, jan_hours, feb_hours]


def test_builds_are_deterministic(stack_settings: Settings, store: FeatureStore, jan: TrainingSet) -> None:
    again = training_set(stack_settings, JAN, store=store)
    assert again.fingerprint == jan.fingerprint
    pd.testing.assert_frame_equal(again.frame, jan.frame)


def test_unknown_as_of_lists_what_exists(stack_settings: Settings, store: FeatureStore) -> None:
    with pytest.raises(NoSnapshotError, match=r"no snapshot at as_of 2024-01-30.*2024-01-31, 2024-02-29"):
        training_set(stack_settings, date(2024, 1, 30), store=store)
    with pytest.raises(ValueError, match="unknown feature service"):
        training_set(stack_settings, JAN, service="nope", store=store)
    with pytest.raises(ValueError, match="label_horizon"):
        training_set(stack_settings, JAN, label_horizon=-1, store=store)


@pytest.mark.parametrize(
    ("start", "months", "want"),
    [
        (date(2024, 1, 31), 1, date(2024, 2, 29)),
        (date(2024, 2, 29), 1, date(2024, 3, 31)),
        (date(2024, 2, 29), 12, date(2025, 2, 28)),
        (date(2024, 1, 15), 1, date(2024, 2, 15)),
        (date(2024, 11, 30), 2, date(2025, 1, 31)),
        (date(2024, 3, 31), 0, date(2024, 3, 31)),
    ],
)
def test_add_months_keeps_month_ends(start: date, months: int, want: date) -> None:
    assert add_months(start, months) == want
