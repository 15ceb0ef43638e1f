"""The Feast objects: one entity, five feature views over the snapshot tables, and the feature
services that name the model inputs. ``churn_v1`` is THE list of the 14 model features; training,
serving, monitoring and the API's ``missing_features`` all read it from here.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Bool, Float64, Int64, PrimitiveFeastType, String

from streamflow.features.spec import FeatureSpec
from streamflow.settings import get_settings

# Snapshots are monthly: a value older than this is missing for training and stale for serving.
FEATURE_TTL = timedelta(days=get_settings().feature_max_age_days)

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A subscriber")


def _source(table: str) -> PostgreSQLSource:
    return PostgreSQLSource(name=table, table=table, timestamp_field="as_of_ts")


def _view(name: str, table: str, fields: dict[str, PrimitiveFeastType], description: str) -> FeatureView:
    return FeatureView(
        name=name,
        entities=[user],
        ttl=FEATURE_TTL,
        schema=[Field(name=n, dtype=t) for n, t in fields.items()],
        source=_source(table),
        online=True,
        description=description,
    )


# Decimal columns are Float64 so that a stored 29.85 is served as 29.85 (no float32 rounding).
subscription_profile = _view(
    "subscription_profile",
    "subscription_snapshots",
    {
        "months_active": Int64,
        "monthly_fee": Float64,
        "total_paid": Float64,
        "paperless_billing": Bool,
        "plan_stream_tv": Bool,
        "plan_stream_movies": Bool,
        "net_service": String,
        "contract_type": String,
    },
    "Plan, tenure and billing at the snapshot date.",
)
user_profile = _view(
    "user_profile",
    "user_snapshots",
    {"user_gender": String, "user_is_senior": Bool, "has_family": Bool, "has_dependents": Bool},
    "Demographics.",
)
usage_30d = _view(
    "usage_30d",
    "usage_snapshots",
    {
        "watch_hours_30d": Float64,
        "avg_session_mins_7d": Float64,
        "unique_devices_30d": Int64,
        "skips_7d": Int64,
        "rebuffer_events_7d": Int64,
    },
    "Viewing over the last 30 (and 7) days.",
)
payments_90d = _view(
    "payments_90d", "payments_snapshots", {"failed_payments_90d": Int64}, "Failed payments, last 90 days."
)
support_90d = _view(
    "support_90d",
    "support_snapshots",
    {"support_tickets_90d": Int64, "ticket_avg_resolution_hrs_90d": Float64},
    "Support load, last 90 days.",
)

churn_v1 = FeatureService(
    name="churn_v1",
    features=[
        subscription_profile[
            [
                "months_active",
                "monthly_fee",
                "paperless_billing",
                "plan_stream_tv",
                "plan_stream_movies",
                "net_service",
            ]
        ],
        usage_30d,
        payments_90d,
        support_90d,
    ],
    description="The 14 features of the course model.",
)
churn_v2 = FeatureService(
    name="churn_v2",
    features=[subscription_profile, user_profile, usage_30d, payments_90d, support_90d],
    description="churn_v1 plus contract, total paid and demographics.",
)

FEATURE_VIEWS = [subscription_profile, user_profile, usage_30d, payments_90d, support_90d]
FEATURE_SERVICES = {s.name: s for s in (churn_v1, churn_v2)}
DEFAULT_FEATURE_SERVICE = churn_v1.name


def feature_spec(service_name: str = DEFAULT_FEATURE_SERVICE) -> FeatureSpec:
    try:
        service = FEATURE_SERVICES[service_name]
    except KeyError:
        raise ValueError(
            f"unknown feature service {service_name!r}; known: {sorted(FEATURE_SERVICES)}"
        ) from None
    refs, names, numeric, boolean, categorical, integer = [], [], [], [], [], []
    for projection in service.feature_view_projections:
        for field in projection.features:
            refs.append(f"{projection.name_to_use()}:{field.name}")
            names.append(field.name)
            if field.dtype == String:
                categorical.append(field.name)
            elif field.dtype == Bool:
                boolean.append(field.name)
            else:
                numeric.append(field.name)
                if field.dtype == Int64:
                    integer.append(field.name)
    return FeatureSpec(
        service_name,
        tuple(refs),
        tuple(names),
        tuple(numeric),
        tuple(boolean),
        tuple(categorical),
        tuple(integer),
    )
