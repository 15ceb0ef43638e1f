"""Month arithmetic of the training sets: label horizons land on month ends."""

from __future__ import annotations

from datetime import date

import pytest

from streamflow.months import add_months


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
