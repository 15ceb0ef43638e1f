"""MLflow artifacts on an S3-compatible store (STREAMFLOW_ARTIFACTS_URI=s3://bucket/prefix).

The store is a real S3-compatible HTTP server that the tests start: moto in server mode, on a free
loopback port, reached the way a deployment reaches MinIO or S3 (MLFLOW_S3_ENDPOINT_URL and AWS_*
credentials). The tracking store is a fresh PostgreSQL database, as in every mode.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from streamflow.settings import Settings
from streamflow.training import tracking
from streamflow.training.tracking import ArtifactStoreError, check_artifact_store, use_mlflow

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "streamflow-test",
    "AWS_SECRET_ACCESS_KEY": "streamflow-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that would send the clients elsewhere, or give them other credentials.
FOREIGN_ENV = (
    "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "MLFLOW_S3_IGNORE_TLS", "MLFLOW_TRACKING_URI",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError as exc:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}") from exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout_s} s") from exc
            time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3-compatible server in its own process, on a free loopback port."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **AWS_ENV},
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(f"{endpoint}/moto-api/", 60, proc)
        yield endpoint
    finally:
        stop(proc)
        log.close()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This process's S3 clients (MLflow's and StreamFlow's check) pointed at the test server."""
    for name in FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setattr(tracking, "_CHECKED_STORES", set())
    return s3_endpoint


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, **{k.lower(): v for k, v in AWS_ENV.items() if "KEY" in k}
    )


def new_bucket(endpoint: str) -> str:
    name = f"streamflow-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def with_artifacts(base: Settings, uri: str) -> Settings:
    """The same database with another artifact root (built anew, so that the root is validated)."""
    return Settings(
        state_dir=base.state_dir,
        embedded_pg_dir=base.embedded_pg_dir,
        database_name=base.database_name,
        artifacts_uri=uri,
    )


def objects(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    client = s3_client(endpoint)
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def log_run_with_model(settings: Settings, tmp_path: Path, payload: bytes):
    """A run with one file artifact and a registered scikit-learn model, as training logs them."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] + rng.normal(scale=0.5, size=200) > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    use_mlflow(settings)
    blob = tmp_path / "upload" / "model.onnx"
    blob.parent.mkdir()
    blob.write_bytes(payload)
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(blob), artifact_path="onnx")
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=settings.model_name,
            pip_requirements=["scikit-learn"],  # no requirement inference (slow)
        )
    return run, info, model, X


def test_artifacts_round_trip_through_s3(
    s3_env: str, settings_factory: Callable[[str], Settings], tmp_path: Path
) -> None:
    import mlflow

    base = settings_factory("embedded")
    # A bucket that does not exist: one line, and no experiment pointing at nothing.
    missing = with_artifacts(base, "s3://no-such-bucket-streamflow/mlflow")
    with pytest.raises(ArtifactStoreError) as caught:
        use_mlflow(missing)
    assert str(caught.value) == (
        f"MLflow artifact store s3://no-such-bucket-streamflow/mlflow (endpoint {s3_env}): "
        "bucket 'no-such-bucket-streamflow' does not exist"
    )
    assert mlflow.get_experiment_by_name(tracking.EXPERIMENT) is None

    bucket = new_bucket(s3_env)
    root = f"s3://{bucket}/mlflow"
    settings = with_artifacts(base, root + "/")  # a trailing slash is dropped
    assert settings.artifacts_root == root
    payload = os.urandom(300_000)

    run, info, model, X = log_run_with_model(settings, tmp_path, payload)

    experiment = mlflow.get_experiment_by_name(tracking.EXPERIMENT)
    assert experiment.artifact_location == root
    assert run.info.artifact_uri.startswith(f"{root}/")
    # The bytes are on the S3 server, and nothing went to the local default folder.
    stored = objects(s3_env, bucket, "mlflow/")
    run_prefix = run.info.artifact_uri.removeprefix(f"s3://{bucket}/")
    assert stored[f"{run_prefix}/onnx/model.onnx"] == payload
    assert not settings.artifacts_dir.exists() or not any(settings.artifacts_dir.iterdir())

    # Downloaded back: the file byte for byte, the registered model file for file.
    client = mlflow.MlflowClient()
    version = client.get_model_version(settings.model_name, info.registered_model_version)
    assert version.run_id == run.info.run_id
    down = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="onnx/model.onnx", dst_path=str(tmp_path / "down")
    )
    assert Path(down).read_bytes() == payload
    model_dir = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{settings.model_name}/{version.version}", dst_path=str(tmp_path / "model")
        )
    )
    logged = client.get_logged_model(info.model_id)
    assert logged.artifact_location.startswith(f"{root}/")
    model_prefix = logged.artifact_location.removeprefix(f"s3://{bucket}/")
    remote = {
        key.removeprefix(f"{model_prefix}/"): body
        for key, body in stored.items()
        if key.startswith(model_prefix)
    }
    local = {str(p.relative_to(model_dir)): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    assert "MLmodel" in local
    # registered_model_meta is written by the download itself (which version of which model it was).
    assert local.pop("registered_model_meta") == b"model_name: streamflow_churn\nmodel_version: '1'\n"
    assert local == remote
    loaded = mlflow.sklearn.load_model(f"models:/{settings.model_name}/{version.version}")
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_mlflow_server_shows_s3_artifacts(
    s3_env: str, settings_factory: Callable[[str], Settings], tmp_path: Path
) -> None:
    """`streamflow mlflow-ui`'s server (no artifact proxying) reads the S3 store itself for the UI."""
    bucket = new_bucket(s3_env)
    settings = with_artifacts(settings_factory("embedded"), f"s3://{bucket}/mlflow")
    payload = os.urandom(50_000)
    run, *_ = log_run_with_model(settings, tmp_path, payload)

    port = free_port()
    command = tracking.mlflow_server_command(settings, "127.0.0.1", port)
    assert command[command.index("--default-artifact-root") + 1] == f"s3://{bucket}/mlflow"
    assert "--no-serve-artifacts" in command
    log = (tmp_path / "mlflow.log").open("w")
    proc = subprocess.Popen(
        [*command, "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", 120, proc)
        url = f"{base}/get-artifact?path=onnx/model.onnx&run_uuid={run.info.run_id}"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.read() == payload
    finally:
        stop(proc)
        log.close()


def test_endpoint_refusing_connections_is_one_line(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(ArtifactStoreError) as caught:
        check_artifact_store("s3://bucket/prefix", timeout_s=2)
    assert time.monotonic() - started < 10
    assert str(caught.value) == (
        f"MLflow artifact store s3://bucket/prefix (endpoint http://127.0.0.1:{port}): "
        "cannot connect (EndpointConnectionError)"
    )


def test_endpoint_that_never_answers_times_out(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
        started = time.monotonic()
        with pytest.raises(ArtifactStoreError) as caught:
            check_artifact_store("s3://bucket/prefix", timeout_s=1)
        elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 6, f"one attempt of 1 s, not botocore's retries: {elapsed:.1f} s"
    assert str(caught.value) == (
        f"MLflow artifact store s3://bucket/prefix (endpoint {endpoint}): no answer within 1 s (ReadTimeoutError)"
    )
    assert "\n" not in str(caught.value)


def test_compose_bucket_job_creates_the_settings_buckets_once(s3_env: str) -> None:
    """deploy/s3/create_buckets.py, the compose stack's s3-buckets job, against the same S3 server."""
    script = Path(__file__).resolve().parents[2] / "deploy" / "s3" / "create_buckets.py"
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL_S3": s3_env,
        "STREAMFLOW_ARTIFACTS_URI": f"s3://artifacts-{tag}/mlflow",
        "STREAMFLOW_LAKE_URI": f"s3://lake-{tag}/snapshots",
    }
    env.pop("MLFLOW_S3_ENDPOINT_URL")
    first = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"artifacts-{tag}: created", f"lake-{tag}: created"]
    again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"artifacts-{tag}: exists", f"lake-{tag}: exists"]
    # ... and the artifact store's check then passes on the new bucket.
    check_artifact_store(env["STREAMFLOW_ARTIFACTS_URI"], timeout_s=5)
