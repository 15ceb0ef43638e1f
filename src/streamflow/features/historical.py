"""Point-in-time features of an entity query, at chosen snapshot revisions, from Feast's offline store.

Training sets, batch scoring and drift reports read every user of a snapshot this way. A month is
read at the revision it serves (its partition of the snapshot table) unless the caller pins another
revision of it: that month's rows then come from its revision table (``revisions.*``, data/revisions.py),
so a version trained before a month was corrected can be rebuilt from exactly the rows it saw.

Pinning works by handing Feast's offline store the feature views with their batch source replaced
by a query over the pinned rows; the point-in-time join itself is Feast's, unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date

from feast import FeatureStore, FeatureView
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.infra.offline_stores.offline_store import RetrievalJob

from streamflow.data.revisions import SCHEMA, as_of_ts, table_name
from streamflow.features.offline_store import StreamflowPostgreSQLOfflineStore

_NAME = re.compile(r"[a-z_]+")


def relation(table: str, pins: Mapping[date, int]) -> str:
    """SQL for the rows of snapshot ``table`` with each pinned month read at its pinned revision."""
    if not _NAME.fullmatch(table):  # our own table names only: the text goes into SQL as is
        raise ValueError(f"not a snapshot table: {table!r}")
    if not pins:
        return table
    others = ", ".join(f"'{as_of_ts(d).isoformat()}'::timestamptz" for d in sorted(pins))
    pinned = " UNION ALL ".join(
        f"SELECT * FROM {SCHEMA}.{table_name(table, d, int(r))}" for d, r in sorted(pins.items())
    )
    return f"(SELECT * FROM {table} WHERE as_of_ts NOT IN ({others}) UNION ALL {pinned})"


def pinned_view(view: FeatureView, pins: Mapping[date, int]) -> FeatureView:
    """``view`` (a copy the caller owns) reading its pinned months at their pinned revisions."""
    if pins:
        source = view.batch_source
        view.batch_source = PostgreSQLSource(
            name=source.name,
            query=f"SELECT * FROM {relation(source.get_table_query_string(), pins)} pinned",
            timestamp_field=source.timestamp_field,
            created_timestamp_column=source.created_timestamp_column,
        )
    return view


def historical_job(
    store: FeatureStore, entity_sql: str, service: str, pins: Mapping[date, int] | None = None
) -> RetrievalJob:
    """Feast's point-in-time join of ``entity_sql`` (user_id, event_timestamp, ...) with the features
    of ``service``, reading pinned months at their pinned revisions."""
    pins = dict(pins or {})
    feature_service = store.get_feature_service(service)
    views, refs = [], []
    for projection in feature_service.feature_view_projections:
        view = store.get_feature_view(projection.name).with_projection(projection)  # a copy
        views.append(pinned_view(view, pins))
        refs += [f"{projection.name_to_use()}:{f.name}" for f in projection.features]
    return StreamflowPostgreSQLOfflineStore.get_historical_features(
        config=store.config,
        feature_views=views,
        feature_refs=refs,
        entity_df=entity_sql,
        registry=store.registry,
        project=store.project,
        full_feature_names=False,
    )
