"""Reading earlier revisions of a corrected month: training sets and batch-scoring features."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from streamflow.data.ingest import ingest_month
from streamflow.data.revisions import RevisionNotFound
from streamflow.features.apply import apply
from streamflow.monitoring.scoring import snapshot_features
from streamflow.settings import Settings
from streamflow.training.dataset import training_set
from tests.conftest import Months

JAN = date(2024, 1, 31)


def corrected(month: Path, tmp_path: Path) -> tuple[Path, str, float]:
    """The month with its first user's monthly fee raised by 1.10: (folder, user, new fee)."""
    folder = tmp_path / "corrected"
    shutil.copytree(month, folder)
    header, first, *rest = (folder / "subscriptions.csv").read_text().splitlines()
    fields = first.split(",")
    fee = header.split(",").index("monthly_fee")
    fields[fee] = str(Decimal(fields[fee]) + Decimal("1.10"))
    (folder / "subscriptions.csv").write_text("\n".join([header, ",".join(fields), *rest]) + "\n")
    return folder, fields[0], float(fields[fee])


@pytest.fixture
def two_revisions(
    settings_factory: Callable[[str], Settings], generated_months: Months, tmp_path: Path
) -> tuple[Settings, pd.DataFrame, str, float]:
    """January ingested, its training set built, then January corrected (revision 2)."""
    settings = settings_factory("embedded")
    ingest_month(generated_months.jan, JAN, settings)
    ingest_month(generated_months.feb, "2024-02-29", settings)
    apply(settings)
    first = training_set(settings, JAN)
    assert first.revisions == {JAN: 1}
    folder, user, fee = corrected(generated_months.jan, tmp_path)
    assert ingest_month(folder, JAN, settings).revision == 2
    return settings, first, user, fee


def test_a_pinned_revision_gives_the_training_set_it_gave_before(two_revisions) -> None:
    settings, first, user, fee = two_revisions
    latest = training_set(settings, JAN)
    assert latest.revisions == {JAN: 2}
    assert latest.fingerprint != first.fingerprint
    assert latest.frame.set_index("user_id").loc[user, "monthly_fee"] == fee

    again = training_set(settings, JAN, pins={JAN: 1})
    assert again.revisions == {JAN: 1}
    assert again.fingerprint == first.fingerprint
    pd.testing.assert_frame_equal(again.frame, first.frame)


def test_scoring_features_follow_the_pin(two_revisions) -> None:
    settings, first, user, fee = two_revisions
    names = ["user_id", "monthly_fee", "watch_hours_30d"]
    pinned = snapshot_features(settings, JAN, pins={JAN: 1})[names].reset_index(drop=True)
    pd.testing.assert_frame_equal(pinned, first.frame[names].reset_index(drop=True))
    latest = snapshot_features(settings, JAN).set_index("user_id")
    assert latest.loc[user, "monthly_fee"] == fee


def test_a_pin_that_does_not_exist_names_the_readable_revisions(two_revisions) -> None:
    settings, *_ = two_revisions
    with pytest.raises(
        RevisionNotFound, match=r"revision 7 of 2024-01-31 does not exist; readable revisions: 1, 2"
    ):
        training_set(settings, JAN, pins={JAN: 7})
