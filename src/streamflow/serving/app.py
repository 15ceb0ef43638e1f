"""The prediction API.

Errors are part of the interface: unknown user -> 404 with ``missing_features``; incomplete or
stale features -> 422 with ``missing_features``/``stale_features``; malformed input -> 422; no
production model or online store down -> 503. Never a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import Body, FastAPI, Header, Path, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from streamflow import db
from streamflow.data.contracts import ID_PATTERN
from streamflow.features.definitions import feature_spec
from streamflow.monitoring.prediction_log import PredictionLog
from streamflow.serving.metrics import ApiMetrics, MetricsMiddleware
from streamflow.serving.model_holder import LoadedModel, ModelHolder
from streamflow.serving.online import OnlineStoreUnavailable, UserFeatures, online_reader
from streamflow.settings import Settings, get_settings

log = logging.getLogger(__name__)

UserId = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN, examples=["7590-VHVEG"])]


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body


class ErrorBody(BaseModel):
    error: str
    missing_features: list[str] | None = None
    stale_features: list[str] | None = None
    detail: list[dict[str, Any]] | None = None


class PredictRequest(BaseModel):
    user_id: UserId


# /predict's body as FastAPI would document it (the handler parses it itself).
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}


class BatchRequest(BaseModel):
    user_ids: list[UserId] = Field(min_length=1, max_length=get_settings().predict_batch_max)


class ModelRef(BaseModel):
    name: str
    version: int


class Prediction(BaseModel):
    user_id: str
    prediction: int
    probability: float
    threshold: float
    model: ModelRef
    features_used: dict[str, Any]
    as_of: datetime | None


class BatchItem(BaseModel):
    user_id: str
    prediction: int | None = None
    probability: float | None = None
    error: str | None = None
    missing_features: list[str] | None = None
    stale_features: list[str] | None = None


class BatchResponse(BaseModel):
    model: ModelRef
    threshold: float
    results: list[BatchItem]


class FeaturesResponse(BaseModel):
    user_id: str
    features: dict[str, Any]
    as_of: datetime | None


class ModelInfo(BaseModel):
    name: str
    version: int
    alias: str
    run_id: str
    feature_service: str
    trained_as_of: str
    threshold: float
    metrics: dict[str, float]
    loaded_at: datetime
    fast_path_max_abs_diff: float


ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No online features for this user"},
    422: {"model": ErrorBody, "description": "Malformed request, or missing/stale features"},
    503: {"model": ErrorBody, "description": "No production model, or the online store is down"},
}


class Service:
    """Everything a request needs: settings, the model holder, the online reader, metrics."""

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

    def model(self) -> LoadedModel:
        model = self.holder.current
        if model is None:
            raise ApiError(
                503, {"error": f"no production model: {self.holder.last_error or 'not loaded yet'}"}
            )
        return model

    def refresh(self) -> bool:
        """Runs in a worker thread: pick up a moved alias, the latest materialization and drift report."""
        from streamflow.features.store import last_materialization
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

    async def read(self, user_ids: list[str], model_spec) -> list[UserFeatures]:
        try:
            return await self.reader.read(user_ids, model_spec)
        except OnlineStoreUnavailable as exc:
            raise ApiError(503, {"error": str(exc)}) from None


def _feature_error(user_id: str, missing: list[str], stale: list[str], total: int) -> ApiError:
    if len(missing) == total:
        return ApiError(
            404, {"error": f"Missing features for user_id={user_id}", "missing_features": missing}
        )
    return ApiError(
        422,
        {
            "error": f"Incomplete or stale features for user_id={user_id}",
            "missing_features": missing,
            "stale_features": stale,
        },
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    service = Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.reader.open()
        service.prediction_log.start()
        await asyncio.to_thread(service.refresh)
        # Feast, MLflow and scikit-learn leave ~500k long-lived objects: a full collection scanning them
        # stops every request for ~0.1-0.3 s. They live as long as the process, so take them out of it.
        gc.freeze()
        watcher = asyncio.create_task(watch())
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            # After the server finished its in-flight requests: write what the log still buffers.
            await service.prediction_log.close()
            await service.reader.close()
            service.metrics.close()

    async def watch() -> None:
        while True:
            await asyncio.sleep(settings.model_poll_interval_s)
            try:
                await asyncio.to_thread(service.refresh)
            except Exception:  # keep watching whatever happens
                log.exception("model refresh failed")

    app = FastAPIOffline(  # serves Swagger UI's assets itself: /docs works without internet
        title="StreamFlow churn API",
        version="1.0",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        if exc.status in (404, 422) and "missing_features" in exc.body:
            kind = "unknown_user" if exc.status == 404 else "incomplete"
            service.metrics.missing_features.labels(kind).inc()
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse(
            {
                "error": "invalid request: " + "; ".join(e["msg"] for e in detail),
                "detail": jsonable_encoder(detail),
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body FastAPI cannot decode: malformed input is a 422 here
            return JSONResponse({"error": f"invalid request: {exc.detail}"}, status_code=422)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers. No dependency is checked."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: ERRORS[503]})
    async def ready() -> dict[str, Any]:
        """Readiness: a production model is loaded and the online store answers."""
        reasons = []
        if service.holder.current is None:
            reasons.append(f"no production model: {service.holder.last_error or 'not loaded yet'}")
        try:
            await service.reader.ping()
        except OnlineStoreUnavailable as exc:
            reasons.append(str(exc))
        if reasons:
            raise ApiError(503, {"error": "not ready: " + "; ".join(reasons)})
        cache = service.reader.cache
        return {
            "status": "ready",
            "model_version": service.holder.current.version,
            "online_cache": "on" if cache.usable else f"off: {cache.reason or 'no confirmation yet'}",
        }

    @app.get("/features/{user_id}", response_model=FeaturesResponse, responses=ERRORS)
    async def features(user_id: Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]) -> Any:
        """The online features the production model would use for this user."""
        model = service.holder.current
        spec = model.spec if model else feature_spec()
        found = (await service.read([user_id], spec))[0]
        missing = found.missing(spec)
        if len(missing) == len(spec.names):
            raise _feature_error(user_id, missing, [], len(spec.names))
        return {"user_id": user_id, "features": found.values, "as_of": found.as_of}

    # The hot path parses and serialises itself (the documented schemas are the same): FastAPI's body
    # dependency and response-model validation cost ~80 µs of the ~300 µs a cached /predict takes.
    @app.post(
        "/predict",
        response_model=Prediction,
        responses=ERRORS,
        openapi_extra=PREDICT_BODY,
    )
    async def predict(request: Request) -> Response:
        """Churn prediction for one user, from online features and the production model."""
        try:
            user_id = PredictRequest.model_validate_json(await request.body()).user_id
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from None
        model = service.model()  # read once: this request is computed by this version only
        found = (await service.read([user_id], model.spec))[0]
        missing, stale = service.problems(found, model)
        if missing or stale:
            raise _feature_error(user_id, missing, stale, len(model.spec.names))
        probability = found.probabilities.get(model.run_id)
        if probability is None:  # the same values and model give the same answer: score them once
            probability = found.probabilities[model.run_id] = model.predictor.predict_one(found.values)
        prediction = int(probability >= model.threshold)
        service.metrics.predictions.labels(str(prediction), str(model.version)).inc()
        service.prediction_log.append(
            (
                datetime.now(UTC),
                "predict",
                user_id,
                model.name,
                model.version,
                probability,
                prediction,
                found.as_of,
            )
        )
        body = {
            "user_id": user_id,
            "prediction": prediction,
            "probability": probability,
            "threshold": model.threshold,
            "model": {"name": model.name, "version": model.version},
            "features_used": found.values,
            "as_of": found.as_of,
        }
        return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")

    @app.post(
        "/predict/batch", response_model=BatchResponse, response_model_exclude_none=True, responses=ERRORS
    )
    async def predict_batch(request: Annotated[BatchRequest, Body()]) -> Any:
        """Predictions for up to STREAMFLOW_PREDICT_BATCH_MAX users in one vectorised pass."""
        model = service.model()
        found = await service.read(list(request.user_ids), model.spec)
        results: list[dict[str, Any]] = []
        complete: list[tuple[int, UserFeatures]] = []
        for f in found:
            missing, stale = service.problems(f, model)
            if missing or stale:
                err = _feature_error(f.user_id, missing, stale, len(model.spec.names))
                results.append({"user_id": f.user_id, **err.body})
            else:
                complete.append((len(results), f))
                results.append({"user_id": f.user_id})
        if complete:
            proba = model.predictor.predict_proba([f.values for _, f in complete])
            now = datetime.now(UTC)
            for (i, f), p in zip(complete, proba, strict=True):
                results[i]["probability"] = float(p)
                results[i]["prediction"] = int(p >= model.threshold)
                service.metrics.predictions.labels(str(results[i]["prediction"]), str(model.version)).inc()
                service.prediction_log.append(
                    (
                        now,
                        "batch",
                        f.user_id,
                        model.name,
                        model.version,
                        results[i]["probability"],
                        results[i]["prediction"],
                        f.as_of,
                    )
                )
        return {
            "model": {"name": model.name, "version": model.version},
            "threshold": model.threshold,
            "results": results,
        }

    @app.get("/model", response_model=ModelInfo, responses={503: ERRORS[503]})
    async def model_info() -> Any:
        """The model being served."""
        m = service.model()
        return {
            "name": m.name,
            "version": m.version,
            "alias": m.alias,
            "run_id": m.run_id,
            "feature_service": m.feature_service,
            "trained_as_of": m.as_of,
            "threshold": m.threshold,
            "metrics": m.metrics,
            "loaded_at": m.loaded_at,
            "fast_path_max_abs_diff": m.fast_path_max_abs_diff,
        }

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        service.update_gauges()
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", responses={401: ERRORS[503], 403: ERRORS[503], 503: ERRORS[503]})
    async def reload(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Check the production alias now (bearer token STREAMFLOW_ADMIN_TOKEN)."""
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        if not token:
            raise ApiError(403, {"error": "admin endpoints are disabled: set STREAMFLOW_ADMIN_TOKEN"})
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, {"error": "missing or wrong bearer token"})
        swapped = await asyncio.to_thread(service.refresh)
        current = service.holder.current
        return {
            "swapped": swapped,
            "version": current.version if current else None,
            "error": service.holder.last_error,
        }

    return app
