"""Behavioural tests of the fitted models (as in Made With ML's tests/model): what a prediction must
not depend on (invariance), which way it must move (directional), and the cases any churn model must
get right (minimum functionality). On each source of months, like the other model tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streamflow.training.models import FittedModel

MODELS = ["baseline_v1", "logreg_v2", "gbm_v2"]
V2_MODELS = ["logreg_v2", "gbm_v2"]


def model(request: pytest.FixtureRequest, name: str) -> FittedModel:
    return request.getfixturevalue(name)


@pytest.mark.parametrize("name", MODELS)
def test_ids_and_fields_outside_the_service_do_not_change_predictions(
    request: pytest.FixtureRequest, name: str, holdout_frame: pd.DataFrame
) -> None:
    fitted = model(request, name)
    before = fitted.predict_proba(holdout_frame)
    changed = holdout_frame.assign(
        user_id=[f"9999-{i:05d}" for i in range(len(holdout_frame))],
        churn_label=1 - holdout_frame["churn_label"],
    )
    if name == "baseline_v1":  # churn_v1 has no contract or profile features
        changed = changed.assign(contract_type="Two year", user_gender="Female", user_is_senior=True)
    np.testing.assert_array_equal(fitted.predict_proba(changed), before)
    # Row order is no feature either: each user's answer is its own.
    order = np.random.default_rng(0).permutation(len(holdout_frame))
    np.testing.assert_array_equal(fitted.predict_proba(changed.iloc[order]), before[order])


@pytest.mark.parametrize("name", V2_MODELS)
def test_more_support_tickets_raise_churn_probability(
    request: pytest.FixtureRequest, name: str, holdout_frame: pd.DataFrame
) -> None:
    fitted = model(request, name)
    base = holdout_frame.assign(support_tickets_90d=0)
    more = holdout_frame.assign(support_tickets_90d=int(holdout_frame["support_tickets_90d"].max()))
    low, high = fitted.predict_proba(base), fitted.predict_proba(more)
    assert high.mean() > low.mean(), (low.mean(), high.mean())  # weak in the real months: +0.005 to +0.02
    if name == "logreg_v2":  # linear in the scaled feature: every user moves the same way
        assert (high > low).all()


@pytest.mark.parametrize("name", V2_MODELS)
def test_a_month_to_month_contract_raises_churn_probability(
    request: pytest.FixtureRequest, name: str, holdout_frame: pd.DataFrame
) -> None:
    fitted = model(request, name)
    two_year = fitted.predict_proba(holdout_frame.assign(contract_type="Two year"))
    monthly = fitted.predict_proba(holdout_frame.assign(contract_type="Month-to-month"))
    assert monthly.mean() > two_year.mean() + 0.05, (two_year.mean(), monthly.mean())
    if name == "logreg_v2":
        assert (monthly > two_year).all()


def obvious(holdout: pd.DataFrame, churner: bool) -> pd.DataFrame:
    """A new month-to-month fiber user with failed payments, many tickets and little watching, or a
    long-standing two-year DSL user with none of that; values within the month's own ranges."""

    def q(column: str, churner_q: float) -> float:
        return float(holdout[column].quantile(churner_q if churner else 1 - churner_q))

    row = holdout.iloc[[0]].copy()
    integer = {
        "months_active": q("months_active", 0.0),
        "failed_payments_90d": q("failed_payments_90d", 1.0),
        "support_tickets_90d": q("support_tickets_90d", 1.0),
        "rebuffer_events_7d": q("rebuffer_events_7d", 0.95),
        "skips_7d": q("skips_7d", 0.95),
    }
    row = row.assign(
        **{k: int(v) for k, v in integer.items()},
        watch_hours_30d=q("watch_hours_30d", 0.05),
        ticket_avg_resolution_hrs_90d=q("ticket_avg_resolution_hrs_90d", 0.95) if churner else 0.0,
        contract_type="Month-to-month" if churner else "Two year",
        net_service="Fiber optic" if churner else "DSL",
        plan_stream_tv=False,
        plan_stream_movies=False,
        paperless_billing=churner,
        user_is_senior=churner,
        has_family=not churner,
        has_dependents=not churner,
    )
    return row.assign(total_paid=row["monthly_fee"] * row["months_active"])


@pytest.mark.parametrize("name", MODELS)
def test_an_obvious_churner_and_an_obvious_stayer(
    request: pytest.FixtureRequest, name: str, holdout_frame: pd.DataFrame
) -> None:
    fitted = model(request, name)
    churner, stayer = obvious(holdout_frame, True), obvious(holdout_frame, False)
    p_churner, p_stayer = fitted.predict_proba(churner)[0], fitted.predict_proba(stayer)[0]
    assert p_churner > p_stayer
    assert fitted.predict(churner)[0] and not fitted.predict(stayer)[0], (
        p_churner,
        p_stayer,
        fitted.threshold,
    )
