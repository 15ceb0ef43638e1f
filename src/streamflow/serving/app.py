"""The prediction API: the app, its lifespan and its background watcher.

Errors are part of the interface: unknown user -> 404 with ``missing_features``; incomplete or
stale features -> 422 with ``missing_features``/``stale_features``; malformed input -> 422; a body
that is not JSON -> 415; no production model, online store down or not applied -> 503. Never a 500
with a traceback. Every error body carries a ``code`` (errors.py). The routes are in routers/,
the per-request state in service.py, the HTTP server around the app in server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from streamflow.serving import errors
from streamflow.serving.metrics import MetricsMiddleware
from streamflow.serving.protocol import REJECTED_COUNTER
from streamflow.serving.routers import ROUTERS
from streamflow.serving.schemas import BatchRequest, Prediction, PredictRequest
from streamflow.serving.service import Service
from streamflow.settings import Settings, get_settings

__all__ = ["BatchRequest", "PredictRequest", "Prediction", "Service", "create_app"]

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    service = Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await service.reader.open()
        service.prediction_log.start()
        await asyncio.to_thread(service.refresh)
        # Feast, MLflow and scikit-learn leave ~500k long-lived objects: a full collection scanning them
        # stops every request for ~0.1-0.3 s. They live as long as the process, so take them out of it.
        gc.freeze()
        watcher = asyncio.create_task(watch())
        try:
            # Lifespan state: uvicorn hands it to the HTTP protocol, which counts its refusals there.
            yield {REJECTED_COUNTER: service.metrics.rejected}
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
        routes=[route for router in ROUTERS for route in router.routes],  # flat: see routers/__init__
    )
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    errors.install(app, service.metrics)
    return app
