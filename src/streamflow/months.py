"""Calendar-month arithmetic on snapshot dates (as_of is a month end): the one place it is written."""

from __future__ import annotations

import calendar
from datetime import date


def month_end(year: int, month: int) -> date:
    """The last day of ``month`` of ``year``."""
    return date(year, month, calendar.monthrange(year, month)[1])


def is_month_end(d: date) -> bool:
    return d == month_end(d.year, d.month)


def add_months(d: date, months: int) -> date:
    """``d`` plus ``months`` calendar months; a month end stays a month end (2024-01-31 -> 2024-02-29)."""
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    last = month_end(year, month)
    return last if is_month_end(d) else date(year, month, min(d.day, last.day))


def months_between(a: date, b: date) -> int:
    """Calendar months from ``a`` to ``b`` (negative when ``b`` is earlier)."""
    return (b.year - a.year) * 12 + b.month - a.month


def last_month_end(today: date) -> date:
    """The month end before ``today``'s month: the snapshot a run on ``today`` expects."""
    return add_months(month_end(today.year, today.month), -1)
