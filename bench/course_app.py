"""The course's serving path, as a baseline for bench_serve.py: what the course API did per request.

    python bench/course_app.py --host 127.0.0.1 --port 8001     (settings from STREAMFLOW_* variables)

At startup: the Feast store and the churn_v1 FeatureService, and ``mlflow.pyfunc.load_model(
"models:/streamflow_churn@production")`` (loaded once). Per request (a plain ``def`` endpoint, so
FastAPI runs it in its thread pool, as the course did): Feast SDK ``get_online_features`` for one
entity row -> one-row pandas DataFrame -> pyfunc ``predict`` (it converts Feast's types itself, runs
the 300-tree scikit-learn forest and applies the version's threshold) -> JSON. Served by the same
uvicorn + uvloop + httptools stack as ``streamflow serve``, so the comparison measures the application
path, not the HTTP server.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pandas as pd
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from streamflow.settings import Settings


class PredictRequest(BaseModel):
    user_id: str


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        import mlflow

        from streamflow.features.config import feature_store
        from streamflow.features.definitions import DEFAULT_FEATURE_SERVICE, feature_spec
        from streamflow.training.tracking import use_mlflow

        store = feature_store(settings)
        state["store"] = store
        state["service"] = store.get_feature_service(DEFAULT_FEATURE_SERVICE)
        state["spec"] = feature_spec(DEFAULT_FEATURE_SERVICE)
        use_mlflow(settings)
        state["model"] = mlflow.pyfunc.load_model(
            f"models:/{settings.model_name}@{settings.production_alias}"
        )
        yield

    app = FastAPI(title="course churn API", lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(request: PredictRequest) -> Any:
        spec = state["spec"]
        online = (
            state["store"]
            .get_online_features(features=state["service"], entity_rows=[{"user_id": request.user_id}])
            .to_dict()
        )
        features = {name: online[name] for name in spec.names}
        if all(v[0] is None for v in features.values()):
            return JSONResponse({"error": f"no features for user_id={request.user_id}"}, status_code=404)
        frame = pd.DataFrame(features)
        prediction = state["model"].predict(frame)["prediction"]
        return {
            "user_id": request.user_id,
            "prediction": int(prediction.iloc[0]),
            "features": {name: v[0] for name, v in features.items()},
        }

    return app


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    a = p.parse_args()
    uvicorn.run(
        create_app(),
        host=a.host,
        port=a.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
