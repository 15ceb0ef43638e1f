"""The contract of a monthly export: six CSV files, their columns, types, nullability and ranges.

This module is the one description of the export format. Validation (``validate.py``) checks each
column by its kind and bounds, the generator writes files that satisfy it, and error messages quote
its rules. How the files are parsed (quotes, line endings, blanks) is ``csv_dialect.py``'s part.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    ID = "id"
    INT = "int"
    DECIMAL = "decimal"  # at most two decimal places, stored as numeric
    FLOAT = "float"
    BOOL = "bool"  # the literals True / False
    DATE = "date"  # YYYY-MM-DD
    CATEGORY = "category"


@dataclass(frozen=True)
class Col:
    name: str
    kind: Kind
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] = ()
    not_after_as_of: bool = False  # a date that cannot be later than the month's as_of
    blank_when: tuple[str, str] | None = None  # (column, value): blank exactly when that column holds value


@dataclass(frozen=True)
class FileContract:
    table: str
    columns: tuple[Col, ...]

    @property
    def filename(self) -> str:
        return f"{self.table}.csv"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


USER_ID = Col("user_id", Kind.ID)
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
CONTRACT_TYPES = ("Month-to-month", "One year", "Two year")
NET_SERVICES = ("DSL", "Fiber optic", "No")
GENDERS = ("Female", "Male")

USERS = FileContract(
    "users",
    (
        USER_ID,
        Col("signup_date", Kind.DATE, not_after_as_of=True),
        Col("user_gender", Kind.CATEGORY, categories=GENDERS),
        Col("user_is_senior", Kind.BOOL),
        Col("has_family", Kind.BOOL),
        Col("has_dependents", Kind.BOOL),
    ),
)
SUBSCRIPTIONS = FileContract(
    "subscriptions",
    (
        USER_ID,
        Col("months_active", Kind.INT, min=0, max=1000),
        # Blank when net_service is "No": no internet, so no streaming plan. Stored as NULL.
        Col("plan_stream_tv", Kind.BOOL, nullable=True, blank_when=("net_service", "No")),
        Col("plan_stream_movies", Kind.BOOL, nullable=True, blank_when=("net_service", "No")),
        Col("contract_type", Kind.CATEGORY, categories=CONTRACT_TYPES),
        Col("paperless_billing", Kind.BOOL),
        Col("monthly_fee", Kind.DECIMAL, min=0, max=100_000),
        Col("total_paid", Kind.DECIMAL, min=0, max=100_000_000),
        Col("net_service", Kind.CATEGORY, categories=NET_SERVICES),
    ),
)
USAGE = FileContract(
    "usage_agg_30d",
    (
        USER_ID,
        Col("watch_hours_30d", Kind.FLOAT, min=0, max=720),  # 30 days x 24 h
        Col("avg_session_mins_7d", Kind.FLOAT, min=0, max=10_080),  # 7 days in minutes
        Col("unique_devices_30d", Kind.INT, min=0, max=1000),
        Col("skips_7d", Kind.INT, min=0, max=1_000_000),
        Col("rebuffer_events_7d", Kind.INT, min=0, max=1_000_000),
    ),
)
PAYMENTS = FileContract("payments_agg_90d", (USER_ID, Col("failed_payments_90d", Kind.INT, min=0, max=1000)))
SUPPORT = FileContract(
    "support_agg_90d",
    (
        USER_ID,
        Col("support_tickets_90d", Kind.INT, min=0, max=100_000),
        Col("ticket_avg_resolution_hrs_90d", Kind.FLOAT, min=0, max=2160),  # 90 days in hours
    ),
)
LABEL_COLUMN = "churn_label"  # labels.csv's column: whether the user churned
LABELS = FileContract("labels", (USER_ID, Col(LABEL_COLUMN, Kind.BOOL)))

CONTRACTS: tuple[FileContract, ...] = (USERS, SUBSCRIPTIONS, USAGE, PAYMENTS, SUPPORT, LABELS)
"""Every file of a month, in the order they are read. USERS comes first: every other file's user ids
must be users of users.csv, and (unless a month is loaded with allow_incomplete) every user of
users.csv must have a row in every other file, exactly one in each."""
