"""The API's request and response bodies, as documented in its OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

from streamflow.data.contracts import ID_PATTERN
from streamflow.settings import get_settings

UserId = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN, examples=["7590-VHVEG"])]


class PredictRequest(BaseModel):
    user_id: UserId


class BatchRequest(BaseModel):
    user_ids: list[UserId] = Field(min_length=1, max_length=get_settings().predict_batch_max)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route that parses its JSON body itself: the body FastAPI would document."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


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
    code: str | None = None
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
