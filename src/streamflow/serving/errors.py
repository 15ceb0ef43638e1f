"""The API's errors: one JSON shape, ``{"error": <one line for a person>, "code": <for a program>}``,
plus ``missing_features``/``stale_features``/``detail``/``reasons`` where they apply.

A client that hangs up is not a server error: it is counted as 499 (nginx's status for it), and
nothing is logged. Only what is truly unexpected is a 500, with no internals in its body and its
traceback in the log.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from streamflow.serving.metrics import ApiMetrics
from streamflow.serving.protocol import REJECTED_STATUS

log = logging.getLogger(__name__)

# nginx's status for "the client closed the connection before the answer": counted, never sent.
CLIENT_CLOSED = 499


class ApiError(Exception):
    def __init__(self, status: int, code: str, error: str, **extra: Any) -> None:
        self.status = status
        self.body = {"error": error, "code": code, **extra}
        self.headers: dict[str, str] | None = None


class ErrorBody(BaseModel):
    error: str
    code: str
    missing_features: list[str] | None = None
    stale_features: list[str] | None = None
    detail: list[dict[str, Any]] | None = None
    reasons: list[str] | None = None


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    404: _doc("No online features for this user (`unknown_user`)"),
    422: _doc("Malformed request (`invalid_request`), or missing/stale features (`incomplete_features`)"),
    503: _doc(
        "No production model (`no_model`), the online store is down (`online_store_unavailable`)"
        " or not set up (`feature_store_not_applied`)"
    ),
}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    413: _doc("Body larger than STREAMFLOW_API_MAX_BODY_BYTES (`body_too_large`)"),
    415: _doc("Content-Type is not application/json (`unsupported_media_type`)"),
}


def _snake(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def _client_gone(request: Request) -> Response:
    # Nothing reaches the client; the status is for the metrics. The server's own refusals (a body
    # too slow or too long) recorded theirs in the scope.
    return Response(status_code=request.scope.get(REJECTED_STATUS, CLIENT_CLOSED))


def install(app: FastAPI, metrics: ApiMetrics) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        if "missing_features" in exc.body:
            metrics.missing_features.labels(
                "unknown_user" if exc.body["code"] == "unknown_user" else "incomplete"
            ).inc()
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_disconnect(request: Request, _: ClientDisconnect) -> Response:
        return _client_gone(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse(
            {
                "error": "invalid request: " + "; ".join(e["msg"] for e in detail),
                "code": "invalid_request",
                "detail": jsonable_encoder(detail),
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc.__cause__, ClientDisconnect):  # FastAPI turns a body it could not read into a 400
            return _client_gone(request)
        if exc.status_code == 400:  # a body FastAPI cannot decode: malformed input is a 422 here
            return JSONResponse(
                {"error": f"invalid request: {exc.detail}", "code": "invalid_request"}, status_code=422
            )
        return JSONResponse(
            {"error": str(exc.detail), "code": _snake(exc.status_code)},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__})", "code": "internal_error"}, status_code=500
        )
