"""Liveness, readiness, the served model and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from streamflow.serving.errors import ERRORS, ApiError
from streamflow.serving.online import OnlineStoreUnavailable
from streamflow.serving.schemas import ModelInfo
from streamflow.serving.service import ServiceDep

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. No dependency is checked."""
    return {"status": "ok"}


@router.get("/ready", responses={503: ERRORS[503]})
async def ready(service: ServiceDep) -> dict[str, Any]:
    """Readiness: a production model is loaded, and the online store answers and is set up.

    A 503 lists every reason in ``error`` and their codes in ``reasons``."""
    reasons: list[tuple[str, str]] = []
    if service.holder.current is None:
        reasons.append(("no_model", service.no_model_reason()))
    try:
        await service.reader.ping()
    except OnlineStoreUnavailable as exc:
        reasons.append((exc.code, str(exc)))
    if reasons:
        raise ApiError(
            503,
            "not_ready",
            "not ready: " + "; ".join(message for _, message in reasons),
            reasons=[code for code, _ in reasons],
        )
    cache = service.reader.cache
    return {
        "status": "ready",
        "model_version": service.holder.current.version,
        "online_cache": "on" if cache.usable else f"off: {cache.reason or 'no confirmation yet'}",
    }


@router.get("/model", response_model=ModelInfo, responses={503: ERRORS[503]})
async def model_info(service: ServiceDep) -> Any:
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


@router.get("/metrics", include_in_schema=False)
async def metrics(service: ServiceDep) -> Response:
    service.update_gauges()
    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
