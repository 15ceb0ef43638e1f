"""The one place where StreamFlow's configuration and its defaults live.

Every value can be set with an environment variable prefixed ``STREAMFLOW_`` (for example
``STREAMFLOW_DATABASE_URL``) or in a ``.env`` file in the working directory.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    mlflow_port: int = Field(default=5000, description="Port of the MLflow UI in the demo.")
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
