"""What every request needs: settings, the model holder, the online reader, metrics, the
prediction log. One :class:`Service` per app, reached by routes through :func:`get_service`."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request

from streamflow import db
from streamflow.features.definitions import FeatureSpec
from streamflow.monitoring.prediction_log import PredictionLog
from streamflow.serving.errors import ApiError
from streamflow.serving.metrics import ApiMetrics
from streamflow.serving.model_holder import LoadedModel, ModelHolder
from streamflow.serving.online import OnlineStoreUnavailable, UserFeatures, online_reader
from streamflow.settings import Settings


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Resolved once: polls must not restart an embedded server someone stopped (`streamflow db stop`).
        self.db_target = db.target(settings)
        self.holder = ModelHolder(settings)
        self.metrics = ApiMetrics()
        self.reader = online_reader(settings, self.metrics.cache_hits, self.metrics.cache_misses)
        # Online values older than this are stale: the last materialization minus feature_max_age_days.
        self.oldest_fresh: datetime | None = None
        # Every answered prediction, written to PostgreSQL in the background (never on the request path).
        self.prediction_log = PredictionLog(
            settings,
            written=self.metrics.prediction_log_written,
            dropped=self.metrics.prediction_log_dropped,
        )

    def update_gauges(self) -> None:
        """State gauges of this process, set at every scrape and every poll (so a scrape served by
        another worker in multiprocess mode sees values at most one poll old)."""
        self.metrics.cache_users.set(len(self.reader.cache))
        self.metrics.cache_on.set(float(self.reader.cache.usable))
        self.metrics.prediction_log_pending.set(self.prediction_log.pending)

    def no_model_reason(self) -> str:
        return f"no production model: {self.holder.last_error or 'not loaded yet'}"

    def model(self) -> LoadedModel:
        model = self.holder.current
        if model is None:
            raise ApiError(503, "no_model", self.no_model_reason())
        return model

    def refresh(self) -> bool:
        """Runs in a worker thread: pick up a moved alias, the latest materialization and drift report."""
        from streamflow.features.materialize import last_materialization
        from streamflow.monitoring.drift import latest_drift_share

        swapped = self.holder.refresh()
        if swapped:
            self.metrics.model_swaps.inc()
        current = self.holder.current
        self.metrics.model_version.set(current.version if current else 0)
        self.update_gauges()
        with contextlib.suppress(Exception):  # the reference only matters once the store answers again
            last = last_materialization(self.settings, target=self.db_target)
            if last is not None:
                materialized = datetime.combine(last.snapshot_as_of, datetime.min.time(), UTC)
                self.oldest_fresh = materialized - timedelta(days=self.settings.feature_max_age_days)
        with contextlib.suppress(Exception):  # no report yet, or the database is down: keep the last value
            share = latest_drift_share(self.settings, target=self.db_target)
            self.metrics.drift_share.set(float("nan") if share is None else share)
        return swapped

    def problems(self, found: UserFeatures, model: LoadedModel) -> tuple[list[str], list[str]]:
        missing = found.missing(model.spec) if len(found.values) < len(model.spec.names) else []
        stale: list[str] = []
        oldest = self.oldest_fresh
        if oldest is not None and found.event_ts and min(found.event_ts.values()) < oldest:
            stale = [n for n, ts in found.event_ts.items() if ts < oldest]
        return missing, stale

    async def read(self, user_ids: list[str], spec: FeatureSpec) -> list[UserFeatures]:
        try:
            return await self.reader.read(user_ids, spec)
        except OnlineStoreUnavailable as exc:
            raise ApiError(503, exc.code, str(exc)) from None


def feature_error(user_id: str, missing: list[str], stale: list[str], total: int) -> ApiError:
    if len(missing) == total:
        return ApiError(
            404, "unknown_user", f"Missing features for user_id={user_id}", missing_features=missing
        )
    return ApiError(
        422,
        "incomplete_features",
        f"Incomplete or stale features for user_id={user_id}",
        missing_features=missing,
        stale_features=stale,
    )


def service_of(request: Request) -> Service:
    """The app's Service (what :func:`get_service` gives a route, without a dependency's cost)."""
    return request.app.state.service


async def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
