"""The one place where StreamFlow's configuration and its defaults live.

Every value can be set with an environment variable prefixed ``STREAMFLOW_`` (for example
``STREAMFLOW_DATABASE_URL``) or in a ``.env`` file in the working directory.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamflow import catalog

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMFLOW_", env_file=".env", extra="ignore")

    state_dir: Path = Field(
        default=Path(".streamflow"),
        description="Folder for the embedded PostgreSQL, Feast repo config, MLflow artifacts and reports.",
    )
    database_url: str | None = Field(
        default=None,
        description="External PostgreSQL URL (postgresql://user@host:port/db). Unset: embedded server.",
    )
    database_name: str = Field(default="streamflow", description="Database used on the embedded server.")
    embedded_pg_dir: Path | None = Field(
        default=None, description="Embedded server's data folder (<state_dir>/pg)."
    )
    db_connect_timeout_s: int = Field(default=5, ge=1, description="Timeout for opening a connection.")
    db_statement_timeout_s: int = Field(default=600, ge=1, description="Timeout for one SQL statement.")
    db_pool_size: int = Field(
        default=8, ge=1, le=100, description="Connections each process keeps open at most (its pool)."
    )

    online_store: Literal["postgres", "redis"] = "postgres"
    redis_url: str = "redis://127.0.0.1:6379/0"

    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="Overrides the tracking store; MLflow's own MLFLOW_TRACKING_URI wins over it.",
    )
    model_name: str = "streamflow_churn"
    production_alias: str = "production"
    promotion_margin: float = Field(default=0.01, ge=0, description="ROC-AUC a candidate must gain.")
    seed: int = 42

    prefect_port: int = Field(default=4200, description="Port of the local Prefect server (streamflow up).")
    mlflow_host: str = Field(
        default="127.0.0.1", description="Bind address of the MLflow UI (streamflow mlflow-ui)."
    )
    mlflow_port: int = Field(
        default=5000, description="Port of the MLflow UI (streamflow mlflow-ui, the demo)."
    )
    log_level: LogLevel | None = Field(
        default=None,
        description="StreamFlow's and uvicorn's log level (--log-level). Unset: warning for one-shot"
        " commands, info for the servers (serve, mlflow-ui, worker).",
    )

    # What gets trained when nobody says: `streamflow train` fits the baseline (the course model);
    # `monitor`, `pipeline` and the monthly schedule train the candidate. The demo trains both.
    model_type: str = Field(default="baseline", description="Model `streamflow train` fits unless told.")
    feature_service: str = Field(
        default="churn_v1", description="FeatureService `train` and `drift` use unless told."
    )
    candidate_model_type: str = Field(default="logreg", description="Model `monitor`/`pipeline` retrain.")
    candidate_feature_service: str = Field(
        default="churn_v2", description="FeatureService of the model `monitor`/`pipeline` retrain."
    )
    inbox_dir: Path | None = Field(
        default=None, description="Where scheduled monthly runs find <as_of>/ folders (<state_dir>/inbox)."
    )

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    admin_token: SecretStr | None = None
    feature_max_age_days: int = Field(
        default=62,
        ge=1,
        description="Online features this much older than the last materialization are stale.",
    )
    model_poll_interval_s: float = Field(default=2.0, gt=0, description="How often the API checks the alias.")
    online_timeout_s: float = Field(default=2.0, gt=0, description="Budget for one online-store read.")
    predict_batch_max: int = Field(default=1000, ge=1, description="Most user ids in one /predict/batch.")
    online_cache_max_users: int = Field(
        default=50_000,
        ge=0,
        description="Users whose online features the API keeps in memory (~2.4 KB each with churn_v1),"
        " dropped on every online-store write (PostgreSQL online store only; 0: off).",
    )

    # Monitoring: the API's prediction log, and what makes `streamflow monitor` retrain.
    prediction_log_buffer_size: int = Field(
        default=100_000,
        ge=1,
        description="Most prediction-log entries held in memory (~20 MB), written or not; beyond, dropped.",
    )
    prediction_log_batch_size: int = Field(default=5_000, ge=1, description="Prediction-log rows per COPY.")
    prediction_log_flush_interval_s: float = Field(
        default=1.0, gt=0, description="Longest a partial prediction-log batch waits before it is written."
    )
    prediction_log_shutdown_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Budget for the prediction log's final flush at shutdown; what is left is dropped.",
    )
    drift_threshold: float = Field(
        default=0.3, ge=0, le=1, description="Retrain when the share of drifted features reaches this."
    )
    target_drift_alpha: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Retrain when the churn-rate test between two months' labels has p below this (0: off).",
    )
    retrain_auc_drop: float = Field(
        default=0.05,
        ge=0,
        description="Retrain when production's hold-out ROC-AUC on the current month's labels is more than"
        " this below its recorded training hold-out ROC-AUC.",
    )

    # The API's HTTP server (serving/server.py, serving/protocol.py).
    api_request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest a client may take to send one request, from its first byte to its last"
        " (line, headers, body); then 408 and the connection is closed. The app's own work is not timed.",
    )
    api_max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body the API reads; beyond, 413."
    )
    api_max_header_bytes: int = Field(
        default=65_536, ge=1024, description="Largest request line + headers; beyond, 431."
    )
    # Training and batch scoring at scale.
    holdout_fraction: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="Share of users held out of training (stable hash of user_id), scored once,"
        " never tuned on.",
    )
    cv_sample_rows: int = Field(
        default=20_000,
        ge=100,
        description="Most training rows that cross-validation (hyperparameter search and F1 threshold)"
        " runs on: a stratified sample drawn with the seed; the final model is fitted on every training row.",
    )
    cv_folds: int = Field(default=5, ge=2, description="Folds of that cross-validation.")
    score_chunk_rows: int = Field(
        default=50_000, ge=1, description="Users `streamflow score` predicts and COPYs per chunk."
    )
    # MLflow artifacts: a folder (the default, <state_dir>/mlartifacts) or an S3-compatible store.
    artifacts_uri: str | None = Field(
        default=None,
        description="Artifact root of new MLflow experiments: a folder, file:///path or s3://bucket/prefix"
        " (S3 through MLflow's usual MLFLOW_S3_ENDPOINT_URL and AWS_* credentials). Unset:"
        " <state_dir>/mlartifacts.",
    )
    artifacts_timeout_s: float = Field(
        default=5.0, gt=0, description="Budget of the S3 artifact store's start-up check (connect and read)."
    )

    @field_validator("artifacts_uri")
    @classmethod
    def _artifacts_uri_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in ("", "file", "s3"):
            raise ValueError(f"artifacts_uri must be a folder, file:// or s3:// URI, not {value!r}")
        if scheme == "s3" and not value[len("s3://") :].split("/", 1)[0]:
            raise ValueError(f"artifacts_uri {value!r} names no bucket (s3://bucket/prefix)")
        return value.rstrip("/") if scheme == "s3" else value

    @property
    def artifacts_root(self) -> str:
        """The artifact root as a URI MLflow accepts (a folder becomes an absolute file:// URI)."""
        value = self.artifacts_uri
        if value is None:
            return self.artifacts_dir.as_uri()
        if "://" in value:
            return value
        return Path(value).expanduser().resolve().as_uri()

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("model_type", "candidate_model_type")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in catalog.MODEL_TYPES:
            raise ValueError(f"unknown model type {value!r}; known: {', '.join(catalog.MODEL_TYPES)}")
        return value

    @field_validator("feature_service", "candidate_feature_service")
    @classmethod
    def _known_service(cls, value: str) -> str:
        if value not in catalog.FEATURE_SERVICES:
            raise ValueError(
                f"unknown feature service {value!r}; known: {', '.join(catalog.FEATURE_SERVICES)}"
            )
        return value

    @property
    def pg_dir(self) -> Path:
        return (self.embedded_pg_dir or self.state_dir / "pg").resolve()

    @property
    def inbox(self) -> Path:
        return (self.inbox_dir or self.state_dir / "inbox").resolve()

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir.resolve() / "mlartifacts"

    @property
    def feast_dir(self) -> Path:
        return self.state_dir.resolve() / "feast"

    @property
    def reports_dir(self) -> Path:
        return self.state_dir.resolve() / "reports"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
