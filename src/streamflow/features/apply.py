"""Register StreamFlow's Feast objects (definitions.py) and make sure their online tables exist."""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass

from feast import FeatureStore
from feast.feature_view import DUMMY_ENTITY_NAME

from streamflow import db
from streamflow.features.config import ONLINE_CHANNEL, feature_store
from streamflow.features.definitions import FEATURE_SERVICES, FEATURE_VIEWS, user
from streamflow.features.online_writer import bulk_supported, online_tables
from streamflow.migrations import migrate
from streamflow.settings import Settings


@dataclass(frozen=True)
class ApplyResult:
    entities: list[str]
    feature_views: list[str]
    feature_services: list[str]
    deleted: list[str]
    seconds: float


def apply(settings: Settings, store: FeatureStore | None = None) -> ApplyResult:
    """Register the entity, views and services of definitions.py; objects of the project that are no
    longer defined there are deleted. Idempotent."""
    t0 = time.perf_counter()
    store = store or feature_store(settings)
    services = list(FEATURE_SERVICES.values())
    defined = {
        "entity": {user.name},
        "view": {v.name for v in FEATURE_VIEWS},
        "service": {s.name for s in services},
    }
    registry, project = store.registry, store.project
    stale = [
        *(s for s in registry.list_feature_services(project) if s.name not in defined["service"]),
        *(v for v in registry.list_feature_views(project) if v.name not in defined["view"]),
        # Feast registers a "__dummy" entity of its own for entity-less views: never ours to delete.
        *(
            e
            for e in registry.list_entities(project)
            if e.name not in defined["entity"] | {DUMMY_ENTITY_NAME}
        ),
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        store.apply([user, *FEATURE_VIEWS, *services], objects_to_delete=stale, partial=not stale)
    if bulk_supported(store.config):
        with db.connect(db.target(settings), settings, autocommit=True) as conn:
            migrate(conn)
            with conn.transaction():
                online_tables(conn, store, FEATURE_VIEWS)
                # Views deleted above dropped their tables without a trigger firing: say it here.
                conn.execute("SELECT pg_notify(%s, 'apply')", (ONLINE_CHANNEL,))
    return ApplyResult(
        entities=[user.name],
        feature_views=[v.name for v in FEATURE_VIEWS],
        feature_services=[s.name for s in services],
        deleted=[o.name for o in stale],
        seconds=time.perf_counter() - t0,
    )
