"""HTTP details shared by the routes: JSON bodies and bearer tokens."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from streamflow.serving.errors import ApiError

M = TypeVar("M", bound=BaseModel)


JSON = b"application/json"


def is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    """True if the Content-Type is ``application/json``, with or without parameters; a charset,
    if given, must be UTF-8 (RFC 8259: JSON between systems is UTF-8). Case-insensitive."""
    for name, value in headers:
        if name == b"content-type":
            if value == JSON:
                return True
            media, _, params = value.partition(b";")
            if media.strip().lower() != JSON:
                return False
            for param in params.split(b";"):
                key, _, val = param.partition(b"=")
                if key.strip().lower() == b"charset" and val.strip().strip(b'"').lower() not in (
                    b"utf-8",
                    b"utf8",
                ):
                    return False
            return True
    return False


def unsupported_media_type(headers: list[tuple[bytes, bytes]]) -> ApiError:
    given = next((v.decode("latin-1") for n, v in headers if n == b"content-type"), None)
    what = f"Content-Type {given!r}" if given is not None else "no Content-Type"
    return ApiError(
        415, "unsupported_media_type", f"unsupported media type: {what}; send application/json (UTF-8)"
    )


async def read_json(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model``: 415 unless it is declared JSON, 422 if it does not parse
    or validate (the same errors FastAPI's own body parsing gives, at a fraction of its cost)."""
    headers = request.scope["headers"]
    if not is_json(headers):
        raise unsupported_media_type(headers)
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (the scheme in any case, RFC 9110 11.1); None
    for a missing header, another scheme, or a bare token."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
