"""The contract of a monthly export: six CSV files, their columns, types, nullability and ranges.

This module is the one description of the export format. Validation builds pandera schemas from it,
the generator writes files that satisfy it, and error messages quote its rules.
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
        Col("signup_date", Kind.DATE),
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
        Col("plan_stream_tv", Kind.BOOL, nullable=True),
        Col("plan_stream_movies", Kind.BOOL, nullable=True),
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
LABELS = FileContract("labels", (USER_ID, Col("churn_label", Kind.BOOL)))

CONTRACTS: tuple[FileContract, ...] = (USERS, SUBSCRIPTIONS, USAGE, PAYMENTS, SUPPORT, LABELS)
