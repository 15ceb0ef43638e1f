"""Operations behind the admin bearer token (STREAMFLOW_ADMIN_TOKEN)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header

from streamflow.serving.errors import ApiError, ErrorBody
from streamflow.serving.http import bearer_token
from streamflow.serving.service import ServiceDep


async def require_admin(service: ServiceDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """``Authorization: Bearer <STREAMFLOW_ADMIN_TOKEN>``; the scheme in any case, never a bare token."""
    settings = service.settings
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    if not token:
        raise ApiError(403, "admin_disabled", "admin endpoints are disabled: set STREAMFLOW_ADMIN_TOKEN")
    given = bearer_token(authorization)
    if given is None:
        error = ApiError(
            401,
            "unauthorized",
            "missing bearer token: send Authorization: Bearer <token>"
            if not authorization
            else "Authorization must be Bearer <token>",
        )
    elif not secrets.compare_digest(given.encode(), token.encode()):
        error = ApiError(401, "unauthorized", "wrong bearer token")
    else:
        return
    error.headers = {"WWW-Authenticate": "Bearer"}
    raise error


ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token (`unauthorized`)"},
    403: {"model": ErrorBody, "description": "STREAMFLOW_ADMIN_TOKEN is not set (`admin_disabled`)"},
}

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], responses=ADMIN_ERRORS)


@router.post("/reload")
async def reload(service: ServiceDep) -> dict[str, Any]:
    """Check the production alias now."""
    swapped = await asyncio.to_thread(service.refresh)
    current = service.holder.current
    return {
        "swapped": swapped,
        "version": current.version if current else None,
        "error": service.holder.last_error,
    }
