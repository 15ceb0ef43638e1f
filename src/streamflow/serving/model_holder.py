"""The production model inside the API, and its hot swap.

The holder polls ``models:/<name>@production``; when the alias moves it loads the new version
(ONNX fast path + the reference scikit-learn pipeline), checks on the version's verification
sample that both agree, and only then swaps one reference. A request reads that reference once,
so it is computed entirely by one version, and in-flight requests never see a half-loaded model.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from streamflow.features.definitions import FeatureSpec, feature_spec
from streamflow.serving.fast_model import FastPathMismatchError, OnnxPredictor, verify
from streamflow.serving.outages import Dependency, describe_uri, one_line
from streamflow.settings import Settings
from streamflow.training.tracking import use_mlflow
from streamflow.training.train import ONNX_ARTIFACT, SAMPLE_ARTIFACT

log = logging.getLogger(__name__)


class _RegistryErrors(logging.Filter):
    """MLflow logs a full traceback for every failed registry query ("SQLAlchemy database error"),
    then raises it; the holder reports the registry's state itself, one line per change."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SQLAlchemy database error")


_REGISTRY_ERRORS = _RegistryErrors()


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    alias: str
    run_id: str
    as_of: str
    feature_service: str
    spec: FeatureSpec
    threshold: float
    metrics: dict[str, float]
    loaded_at: datetime
    predictor: OnnxPredictor
    fast_path_max_abs_diff: float


class ModelHolder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._refused: set[int] = set()
        self._lock = threading.Lock()  # one load at a time (watcher vs /admin/reload)
        self._mlflow_client = None
        self.registry = Dependency("model registry")  # named with its address once MLflow is set up
        logging.getLogger("mlflow.store.db.utils").addFilter(_REGISTRY_ERRORS)

    def _client(self):
        """One client for the process: configuring MLflow on every poll cost ~10 ms of CPU."""
        import mlflow

        if self._mlflow_client is None:
            use_mlflow(self.settings)
            self.registry.name = f"model registry ({describe_uri(mlflow.get_registry_uri())})"
            self._mlflow_client = mlflow.MlflowClient()
        return self._mlflow_client

    def _unavailable(self, exc: BaseException) -> None:
        reason = one_line(exc)
        self.registry.failed(reason)
        self.last_error = f"{self.registry.name} unavailable: {reason}"

    def refresh(self) -> bool:
        """Load the version the alias points at if it is not the current one; True on a swap."""
        import mlflow

        with self._lock:
            s = self.settings
            try:
                client = self._client()
                mv = client.get_model_version_by_alias(s.model_name, s.production_alias)
            except mlflow.exceptions.MlflowException as exc:
                if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                    self.registry.answered()
                    self.last_error = f"no version of {s.model_name} holds @{s.production_alias}"
                else:
                    self._unavailable(exc)
                return False
            except Exception as exc:  # registry database down
                self._unavailable(exc)
                return False
            self.registry.answered()
            version = int(mv.version)
            if self.current is not None and self.current.version == version:
                return False
            if version in self._refused:
                return False
            try:
                loaded = self._load(client, mv)
            except FastPathMismatchError as exc:  # a broken artifact stays broken: never retry it
                self._refused.add(version)
                self.last_error = f"refused {s.model_name} version {version}: {exc}"
                log.error(self.last_error)
                return False
            except Exception as exc:  # registry or artifact store unreachable: retry next poll
                error = f"could not load {s.model_name} version {version}: {one_line(exc)}"
                if error != self.last_error:  # once, not at every poll
                    log.warning(error)
                self.last_error = error
                return False
            self.current = loaded
            self.last_error = None
            log.info("serving %s version %s", s.model_name, version)
            return True

    def _load(self, client, mv) -> LoadedModel:
        import mlflow

        s = self.settings
        spec = feature_spec(mv.tags.get("feature_service", ""))
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=ONNX_ARTIFACT, dst_path=tmp
            )
            sample_path = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=SAMPLE_ARTIFACT, dst_path=tmp
            )
            predictor = OnnxPredictor(Path(onnx_path).read_bytes(), spec)
            sample = pd.read_parquet(sample_path)
        reference = mlflow.sklearn.load_model(f"models:/{s.model_name}/{mv.version}")
        diff = verify(reference, predictor, sample, tol=1e-5)
        run = client.get_run(mv.run_id)
        return LoadedModel(
            name=s.model_name,
            version=int(mv.version),
            alias=s.production_alias,
            run_id=mv.run_id,
            as_of=mv.tags.get("as_of", ""),
            feature_service=spec.service,
            spec=spec,
            threshold=float(mv.tags["threshold"]),
            metrics=dict(run.data.metrics),
            loaded_at=datetime.now(UTC),
            predictor=predictor,
            fast_path_max_abs_diff=float(diff),
        )
