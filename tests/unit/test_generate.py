"""The synthetic month generator: contract-valid, deterministic, realistic churn, consistent across months."""

from __future__ import annotations

import functools
import itertools
import re
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from streamflow.data.contracts import CONTRACTS
from streamflow.data.generate import as_of_dates, generate_months
from streamflow.data.validate import validate_month

USERS, MONTHS, SEED = 4000, 3, 11


@pytest.fixture(scope="module")
def months(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, date]]:
    return generate_months(tmp_path_factory.mktemp("gen"), USERS, MONTHS, SEED, date(2024, 1, 31))


@functools.cache
def load(month_dir: Path, *, raw: bool = False) -> pd.DataFrame:
    """All six files joined on user_id; ``raw`` keeps every value as its CSV text (blank -> "").

    Cached: tests read the same months many times and never modify the frames.
    """
    frame: pd.DataFrame | None = None
    for contract in CONTRACTS:
        part = pd.read_csv(month_dir / contract.filename, dtype=str if raw else None, keep_default_na=not raw)
        frame = part if frame is None else frame.merge(part, on="user_id", how="outer", validate="1:1")
    assert frame is not None
    return frame


def features(frame: pd.DataFrame) -> pd.DataFrame:
    x = frame.drop(columns=["user_id", "signup_date", "churn_label"])
    x = x.astype({"plan_stream_tv": str, "plan_stream_movies": str})
    return pd.get_dummies(x, dtype=float)


def test_months_and_as_of_dates(months: list[tuple[Path, date]]) -> None:
    assert [(p.name, d) for p, d in months] == [
        ("month_000", date(2024, 1, 31)),
        ("month_001", date(2024, 2, 29)),
        ("month_002", date(2024, 3, 31)),
    ]
    assert as_of_dates(date(2023, 11, 30), 3) == [date(2023, 11, 30), date(2023, 12, 31), date(2024, 1, 31)]


def test_every_month_passes_the_contract(months: list[tuple[Path, date]]) -> None:
    for folder, as_of in months:
        valid = validate_month(folder, as_of)
        assert {t: f.rows for t, f in valid.files.items()} == {c.table: USERS for c in CONTRACTS}


def test_literal_formats(months: list[tuple[Path, date]]) -> None:
    folder, _ = months[1]
    for contract in CONTRACTS:
        header = (folder / contract.filename).read_text().split("\n", 1)[0]
        assert header == ",".join(contract.names)
    raw = load(folder, raw=True)
    assert raw["user_id"].str.fullmatch(r"\d{4}-[A-Z]{5}").all()
    assert raw["user_id"].is_unique
    for col in ("monthly_fee", "total_paid"):
        assert raw[col].str.fullmatch(r"\d+\.\d{2}").all(), col
    assert raw["ticket_avg_resolution_hrs_90d"].str.fullmatch(r"\d+\.\d").all()
    for col in ("user_is_senior", "has_family", "has_dependents", "paperless_billing", "churn_label"):
        assert set(raw[col]) == {"True", "False"}, col
    assert raw["signup_date"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert not (folder / "users.csv").read_bytes().count(b"\r")


def test_streaming_plans_blank_exactly_without_internet(months: list[tuple[Path, date]]) -> None:
    for folder, _ in months:
        raw = load(folder, raw=True)
        no_net = raw["net_service"] == "No"
        assert 0.1 < no_net.mean() < 0.4
        for col in ("plan_stream_tv", "plan_stream_movies"):
            assert ((raw[col] == "") == no_net).all(), col
            assert set(raw.loc[~no_net, col]) == {"True", "False"}, col


def test_realistic_ranges(months: list[tuple[Path, date]]) -> None:
    m0 = load(months[0][0])
    assert m0["months_active"].between(0, 72).all() and m0["months_active"].median() > 15
    assert m0["monthly_fee"].between(18, 119).all()
    assert set(m0["contract_type"]) == {"Month-to-month", "One year", "Two year"}
    assert set(m0["net_service"]) == {"DSL", "Fiber optic", "No"}
    assert set(m0["unique_devices_30d"]) == {1, 2, 3}
    assert m0["failed_payments_90d"].between(0, 2).all() and m0["support_tickets_90d"].between(0, 4).all()
    assert 20 < m0["watch_hours_30d"].mean() < 40
    ratio = m0["total_paid"] / (m0["months_active"] * m0["monthly_fee"])
    assert ratio[m0["months_active"] > 0].between(0.7, 1.5).all()
    assert (m0.loc[m0["months_active"] == 0, "total_paid"] == 0).all()
    for folder, as_of in months:
        assert (pd.to_datetime(load(folder)["signup_date"]).dt.date <= as_of).all()


def test_churn_rate(months: list[tuple[Path, date]]) -> None:
    for folder, _ in months:
        assert 0.15 <= load(folder)["churn_label"].mean() <= 0.35


def test_churn_follows_the_features(months: list[tuple[Path, date]]) -> None:
    m0, m1 = load(months[0][0]), load(months[1][0])
    by_contract = m0.groupby("contract_type")["churn_label"].mean()
    assert by_contract["Month-to-month"] > by_contract["Two year"] + 0.25
    by_net = m0.groupby("net_service")["churn_label"].mean()
    assert by_net["Fiber optic"] > by_net["DSL"] > by_net["No"]
    short = m0["months_active"] <= 6
    assert m0.loc[short, "churn_label"].mean() > 2 * m0.loc[m0["months_active"] > 48, "churn_label"].mean()
    assert m0.loc[m0["support_tickets_90d"] >= 2, "churn_label"].mean() > m0["churn_label"].mean()
    # Trained on month 0, scored on month 1: the signal must hold out of time.
    x0, x1 = features(m0), features(m1)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x0, m0["churn_label"])
    auc = roc_auc_score(
        m1["churn_label"], model.predict_proba(x1.reindex(columns=x0.columns, fill_value=0))[:, 1]
    )
    assert auc > 0.75


def test_falling_usage_raises_churn(months: list[tuple[Path, date]]) -> None:
    m0, m1 = load(months[0][0]), load(months[1][0])
    both = m1.merge(m0[["user_id", "watch_hours_30d"]], on="user_id", suffixes=("", "_prev"))
    drop = both["watch_hours_30d_prev"] - both["watch_hours_30d"]
    assert both.loc[drop > 3, "churn_label"].mean() > 1.5 * both.loc[drop < 0, "churn_label"].mean()


def test_churners_leave_and_newcomers_replace_them(months: list[tuple[Path, date]]) -> None:
    for (f0, as_of0), (f1, as_of1) in itertools.pairwise(months):
        m0, m1 = load(f0), load(f1)
        churned = set(m0.loc[m0["churn_label"], "user_id"])
        stayed = set(m0.loc[~m0["churn_label"], "user_id"])
        ids = set(m1["user_id"])
        assert not churned & ids
        assert stayed <= ids
        assert len(m1) == len(m0)
        new = m1[~m1["user_id"].isin(stayed)]
        assert len(new) == len(churned)
        assert (new["months_active"] == 0).all() and (new["total_paid"] == 0).all()
        signup = pd.to_datetime(new["signup_date"]).dt.date
        assert ((signup > as_of0) & (signup <= as_of1)).all()


def test_stayers_age_one_month(months: list[tuple[Path, date]]) -> None:
    m0, m1 = load(months[0][0]), load(months[1][0])
    both = m0[~m0["churn_label"]].merge(m1, on="user_id", suffixes=("_0", "_1"))
    assert len(both) == (~m0["churn_label"]).sum()
    assert (both["months_active_1"] == both["months_active_0"] + 1).all()
    paid = (both["total_paid_1"] - both["total_paid_0"] - both["monthly_fee_0"]).abs()
    assert (paid < 0.005).all()
    for col in ("signup_date", "user_gender", "contract_type", "net_service", "monthly_fee"):
        assert (both[f"{col}_0"] == both[f"{col}_1"]).all(), col


def test_usage_drifts_between_months(months: list[tuple[Path, date]]) -> None:
    # Compared on the same users, so newcomers' different mix does not hide the drift.
    m0, m2 = load(months[0][0]), load(months[2][0])
    both = m0.merge(m2, on="user_id", suffixes=("_0", "_2"))
    assert len(both) > USERS / 3
    assert both["watch_hours_30d_2"].mean() < both["watch_hours_30d_0"].mean() - 0.3
    assert both["rebuffer_events_7d_2"].mean() > both["rebuffer_events_7d_0"].mean() * 1.08


def _digest(folders: list[tuple[Path, date]]) -> dict[str, bytes]:
    return {f"{p.name}/{c.filename}": (p / c.filename).read_bytes() for p, _ in folders for c in CONTRACTS}


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = _digest(generate_months(tmp_path / "a", 1500, 2, 5, date(2024, 1, 31)))
    b = _digest(generate_months(tmp_path / "b", 1500, 2, 5, date(2024, 1, 31), progress=True))
    c = _digest(generate_months(tmp_path / "c", 1500, 2, 6, date(2024, 1, 31)))
    assert a == b
    assert all(a[name] != c[name] for name in a)


def test_first_months_do_not_depend_on_how_many_follow(tmp_path: Path) -> None:
    one = _digest(generate_months(tmp_path / "one", 1000, 1, 3, date(2024, 1, 31)))
    two = _digest(generate_months(tmp_path / "two", 1000, 2, 3, date(2024, 1, 31)))
    assert one == {k: v for k, v in two.items() if k.startswith("month_000/")}


@pytest.mark.parametrize("start", [date(2024, 1, 30), date(2024, 2, 28), date(2024, 3, 1)])
def test_start_must_be_a_month_end(tmp_path: Path, start: date) -> None:
    with pytest.raises(ValueError, match=re.escape("last day of a month")):
        generate_months(tmp_path, 100, 1, 1, start)
    assert not any(tmp_path.iterdir())


def test_bad_sizes_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="users"):
        generate_months(tmp_path, 0, 1, 1, date(2024, 1, 31))
    with pytest.raises(ValueError, match="months"):
        generate_months(tmp_path, 10, 0, 1, date(2024, 1, 31))


def test_signup_never_after_as_of_at_month_end(tmp_path: Path) -> None:
    # February of a leap year: newcomers' signup days must stop at the 29th.
    _, (f1, as_of1) = generate_months(tmp_path, 3000, 2, 9, date(2024, 1, 31))
    signup = pd.to_datetime(load(f1)["signup_date"]).dt.date
    assert signup.max() <= as_of1
    assert signup.max() >= as_of1 - timedelta(days=3)
    assert np.isin(signup, [as_of1]).any()
