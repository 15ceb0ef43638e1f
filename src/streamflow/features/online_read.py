"""Online feature reads through the Feast SDK (any online store), per user with what was found."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from feast import FeatureStore
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

from streamflow.features.config import feature_store
from streamflow.features.definitions import DEFAULT_FEATURE_SERVICE
from streamflow.settings import Settings


def _not_found(column: Any, row: int) -> bool:
    # PostgreSQL marks an absent row NOT_FOUND; Feast's Redis store says PRESENT with an empty value
    # and no event time. A stored null always has its snapshot's event time.
    if column.statuses[row] == FieldStatus.NOT_FOUND:
        return True
    ts = column.event_timestamps[row]
    return ts.seconds == 0 and ts.nanos == 0 and column.values[row].WhichOneof("val") is None


def online_features(
    settings_or_store: Settings | FeatureStore,
    user_ids: Iterable[str],
    service: str = DEFAULT_FEATURE_SERVICE,
) -> list[dict[str, Any]]:
    """Per user, in request order: ``{"user_id", "found", "features", "missing", "event_timestamp"}``.

    Feast answers an unknown user with nulls, not an error: ``found`` is False when no feature of the
    service was found, ``missing`` lists the features not found (a stored null, e.g. plan_stream_tv of
    a user without internet, is found), and ``event_timestamp`` is the newest event time among the
    found features (tz-aware UTC).
    """
    store = (
        settings_or_store if isinstance(settings_or_store, FeatureStore) else feature_store(settings_or_store)
    )
    ids = list(user_ids)
    if not ids:
        return []
    response = store.get_online_features(
        features=store.get_feature_service(service), entity_rows=[{"user_id": u} for u in ids]
    )
    proto = response.proto
    values = response.to_dict()
    names = [n for n in proto.metadata.feature_names.val if n != "user_id"]
    columns = {n: proto.results[i] for i, n in enumerate(proto.metadata.feature_names.val)}
    out = []
    for row, user_id in enumerate(ids):
        missing = [n for n in names if _not_found(columns[n], row)]
        seconds = [columns[n].event_timestamps[row].seconds for n in names if n not in missing]
        out.append(
            {
                "user_id": user_id,
                "found": len(missing) < len(names),
                "features": {n: values[n][row] for n in names},
                "missing": missing,
                "event_timestamp": datetime.fromtimestamp(max(seconds), UTC) if seconds else None,
            }
        )
    return out
