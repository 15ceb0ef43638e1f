"""Where MLflow records runs and models.

By default the tracking store is PostgreSQL (database ``<streamflow db>_mlflow`` on the same
server) and artifacts live under ``<state_dir>/mlartifacts``. MLflow's own ``MLFLOW_TRACKING_URI``
overrides the tracking store, as MLflow users expect; ``STREAMFLOW_MLFLOW_TRACKING_URI`` comes next.

``STREAMFLOW_ARTIFACTS_URI`` moves the artifacts of new experiments elsewhere: another folder, or an
S3-compatible store (``s3://bucket/prefix``, reached with MLflow's usual ``MLFLOW_S3_ENDPOINT_URL``
and ``AWS_*`` credentials). Every process then reads and writes the artifacts there itself, with its
own credentials: the trainer, the API replicas and Ray workers download models straight from the
store, and no MLflow server sits on that path (the default tracking store is PostgreSQL, reached
directly, so there may be no MLflow server at all). Before the first use in a process, an S3 root is
checked once with a short timeout, so that a missing bucket or an endpoint that does not answer is
one clear line instead of botocore's minute of retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from streamflow import db
from streamflow.settings import Settings

EXPERIMENT = "streamflow_churn"
# Model version tag: the snapshot revision of every month the version's training set read, as JSON
# {as_of: revision} (data/pruning.py reads it to find the versions that depend on a revision).
REVISIONS_TAG = "streamflow.revisions"

log = logging.getLogger(__name__)


class ArtifactStoreError(RuntimeError):
    """The artifact store cannot be used; the message is one line naming the store and the reason."""


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


# --------------------------------------------------------------------------- the artifact store


def _s3_client(timeout_s: float):
    """A boto3 S3 client configured the way MLflow's S3 artifact repository configures its own (endpoint,
    TLS, addressing style from the same variables), but with short timeouts and a single attempt."""
    import boto3
    from botocore.config import Config

    ignore_tls = os.environ.get("MLFLOW_S3_IGNORE_TLS", "").strip().lower() in ("1", "true", "yes")
    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None,
        verify=not ignore_tls,
        config=Config(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": os.environ.get("MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE", "auto")},
        ),
    )


def check_artifact_store(uri: str, timeout_s: float = 5.0) -> None:
    """For an ``s3://`` root: the bucket exists and the endpoint answers within ``timeout_s``, else
    ``ArtifactStoreError``. Other roots are left to MLflow. A success is remembered for the process."""
    if not uri.lower().startswith("s3://"):
        return
    import botocore.exceptions as bce

    key = (uri, *(os.environ.get(name, "") for name in _ENDPOINT_VARIABLES))
    if key in _CHECKED_STORES:
        return
    bucket = uri[len("s3://") :].split("/", 1)[0]
    client = _s3_client(timeout_s)
    endpoint = client.meta.endpoint_url
    where = f"MLflow artifact store {uri} (endpoint {endpoint})"
    try:
        client.head_bucket(Bucket=bucket)
    except bce.ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code", "")
        if status == 404 or code in ("404", "NoSuchBucket", "NotFound"):
            why = f"bucket {bucket!r} does not exist"
        elif status == 403 or code in ("403", "AccessDenied", "Forbidden"):
            why = f"access to bucket {bucket!r} denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        else:
            why = f"HEAD bucket {bucket!r} failed: {code or status}"
        raise ArtifactStoreError(f"{where}: {why}") from None
    except (bce.ConnectTimeoutError, bce.ReadTimeoutError) as exc:
        raise ArtifactStoreError(
            f"{where}: no answer within {timeout_s:g} s ({type(exc).__name__})"
        ) from None
    except (bce.EndpointConnectionError, bce.ConnectionClosedError) as exc:
        raise ArtifactStoreError(f"{where}: cannot connect ({type(exc).__name__})") from None
    except bce.NoCredentialsError:
        raise ArtifactStoreError(
            f"{where}: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        ) from None
    except bce.BotoCoreError as exc:
        raise ArtifactStoreError(f"{where}: {type(exc).__name__}: {exc}") from None
    _CHECKED_STORES.add(key)


# The variables that decide which endpoint a client reaches (MLflow's, then boto3's own).
_ENDPOINT_VARIABLES = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_CHECKED_STORES: set[tuple[str, ...]] = set()
_WARNED_LOCATIONS: set[tuple[str, str]] = set()


def _prepare_root(settings: Settings) -> str:
    """The configured artifact root, checked (S3) or created (a folder)."""
    root = settings.artifacts_root
    if root.startswith("file://"):
        Path(root.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    check_artifact_store(root, settings.artifacts_timeout_s)
    return root


# MLflow exports what it is pointed at to these variables, for its own subprocesses. Left there, every
# later Settings in the process (tracking_uri reads MLFLOW_TRACKING_URI first) and every child process
# (a test's API server, the demo's) would inherit the first database's store.
_EXPORTED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def _environment_kept(names: tuple[str, ...]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def use_mlflow(settings: Settings) -> str:
    """Point the mlflow module at StreamFlow's tracking store and experiment; return the experiment id.

    Raises ``ArtifactStoreError`` when the experiment's S3 artifact store cannot be used."""
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri(settings)
    with _environment_kept(_EXPORTED):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        root = _prepare_root(settings)
        # Another process may create it first: then use theirs.
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            mlflow.create_experiment(EXPERIMENT, artifact_location=root)
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    location = experiment.artifact_location
    root = settings.artifacts_root
    if location.rstrip("/") != root.rstrip("/") and (location, root) not in _WARNED_LOCATIONS:
        # An experiment's artifact location is fixed when it is created (MLflow cannot move it).
        _WARNED_LOCATIONS.add((location, root))
        log.warning(
            "experiment %s keeps its artifacts at %s; the configured root %s applies to new experiments",
            EXPERIMENT,
            location,
            root,
        )
    check_artifact_store(location, settings.artifacts_timeout_s)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


def mlflow_server_command(settings: Settings, host: str, port: int) -> list[str]:
    """``mlflow server`` over the same store and artifacts the training code writes to.

    ``--default-artifact-root`` is the root every StreamFlow process uses directly, and artifact proxying
    is off (``--no-serve-artifacts``): the server only lists and shows artifacts in the UI, reading the
    store itself. Proxying (``--serve-artifacts --artifacts-destination``) would make the server the one
    path for every model download of every API replica and Ray worker, and would not work for the
    processes that reach the tracking store in PostgreSQL directly (the default), since they cannot
    resolve ``mlflow-artifacts:/`` locations without an HTTP tracking server."""
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
        settings.artifacts_root,
        "--no-serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
    ]
