"""The online features of one user."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from streamflow.data.contracts import ID_PATTERN
from streamflow.features.definitions import feature_spec
from streamflow.serving.errors import ERRORS
from streamflow.serving.schemas import FeaturesResponse
from streamflow.serving.service import ServiceDep, feature_error

router = APIRouter()


@router.get("/features/{user_id}", response_model=FeaturesResponse, responses=ERRORS)
async def features(
    service: ServiceDep,
    user_id: Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)],
) -> Any:
    """The online features the production model would use for this user."""
    model = service.holder.current
    spec = model.spec if model else feature_spec()
    found = (await service.read([user_id], spec))[0]
    missing = found.missing(spec)
    if len(missing) == len(spec.names):
        raise feature_error(user_id, missing, [], len(spec.names))
    return {"user_id": user_id, "features": found.values, "as_of": found.as_of}
