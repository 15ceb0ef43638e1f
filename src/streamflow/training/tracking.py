"""Where MLflow records runs and models.

By default the tracking store is PostgreSQL (database ``<streamflow db>_mlflow`` on the same
server) and artifacts live under ``<state_dir>/mlartifacts``. MLflow's own ``MLFLOW_TRACKING_URI``
overrides both, as MLflow users expect; ``STREAMFLOW_MLFLOW_TRACKING_URI`` comes next.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from sqlalchemy.engine import make_url

from streamflow import db
from streamflow.settings import Settings

EXPERIMENT = "streamflow_churn"


def tracking_uri(settings: Settings) -> str:
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    # Cached per database: resolving (and creating) the companion database happens once per process.
    key = (settings.database_url, settings.database_name, str(settings.pg_dir))
    if key not in _DEFAULT_URIS:
        url = make_url(db.companion_target(settings, "mlflow").sqlalchemy_url())
        # Without a connect timeout a stopped server would hang MLflow calls (and the API's watcher).
        _DEFAULT_URIS[key] = url.update_query_dict(
            {"connect_timeout": str(settings.db_connect_timeout_s)}
        ).render_as_string(hide_password=False)
    return _DEFAULT_URIS[key]


_DEFAULT_URIS: dict[tuple[str | None, str, str], str] = {}


def use_mlflow(settings: Settings) -> str:
    """Point the mlflow module at StreamFlow's tracking store and experiment; return the experiment id."""
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri(settings))
    mlflow.set_registry_uri(tracking_uri(settings))
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
        # Another process may create it first: then use theirs.
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            mlflow.create_experiment(EXPERIMENT, artifact_location=settings.artifacts_dir.as_uri())
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


def mlflow_server_command(settings: Settings, host: str, port: int) -> list[str]:
    """``mlflow server`` over the same store and artifacts the training code writes to."""
    import shutil
    import sys

    use_mlflow(settings)  # creates the database, its tables and the experiment on first use
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    return [
        mlflow,
        "server",
        "--backend-store-uri",
        tracking_uri(settings),
        "--default-artifact-root",
        settings.artifacts_dir.as_uri(),
        "--host",
        host,
        "--port",
        str(port),
    ]
