"""The API's prediction log: written off the request path, bounded, nothing lost on graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import mlflow
import pytest

from streamflow import db
from streamflow.features.materialize import materialize
from streamflow.monitoring.prediction_log import PredictionLog
from streamflow.registry import production_version, promote
from streamflow.settings import Settings
from streamflow.training.tracking import use_mlflow
from tests.integration.api_server import free_port, server_env, wait_for
from tests.integration.conftest import JAN, TrainedStack


def _entry(model_name: str, i: int) -> tuple:
    now = datetime.now(UTC)
    return (now, "predict", f"USER-{i:05d}", model_name, 1, 0.25, 0, now)


def _rows(settings: Settings, where: str, params: tuple) -> list[tuple]:
    with db.connect(db.target(settings), settings) as conn:
        return conn.execute(f"SELECT * FROM prediction_log WHERE {where}", params).fetchall()


def test_close_writes_everything_still_buffered(stack_settings: Settings) -> None:
    """With a flush interval far beyond the test, only the shutdown flush can write the entries."""
    marker = f"test-{uuid.uuid4().hex[:8]}"

    async def run() -> PredictionLog:
        plog = PredictionLog(stack_settings, flush_interval_s=3600, batch_size=1000)
        plog.start()
        plog.extend(_entry(marker, i) for i in range(2500))  # 2 full batches wake the writer, 500 wait
        await asyncio.sleep(0)
        await plog.close()
        return plog

    plog = asyncio.run(run())
    rows = _rows(stack_settings, "model_name = %s", (marker,))
    assert plog.written == len(rows) == 2500 and plog.dropped == 0 and plog.pending == 0
    assert {r[3] for r in rows} == {f"USER-{i:05d}" for i in range(2500)}


def test_unreachable_database_keeps_the_buffer_bounded_and_counts_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{port}/nowhere", db_connect_timeout_s=1
    )

    async def run() -> tuple[PredictionLog, int, int, float, float]:
        plog = PredictionLog(
            settings, buffer_size=100, batch_size=10, flush_interval_s=0.05, shutdown_timeout_s=0.5
        )
        plog.start()
        started = time.perf_counter()
        plog.extend(_entry("unreachable", i) for i in range(250))
        appended = time.perf_counter() - started
        deadline = time.monotonic() + 10
        while not any("cannot write to PostgreSQL" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the writer never tried the database"
            await asyncio.sleep(0.01)  # the writer's turn: it fails, warns once and keeps the buffer
        pending, dropped = plog.pending, plog.dropped
        started = time.perf_counter()
        await plog.close()
        return plog, pending, dropped, appended, time.perf_counter() - started

    plog, pending, dropped, appended, closing = asyncio.run(run())
    assert pending == 100 and dropped == 150  # bounded: the newest entries beyond capacity are dropped
    assert appended < 0.5  # appending never waited for the database (250 appends take microseconds)
    assert plog.written == 0 and plog.dropped == 250 and plog.pending == 0  # the rest is counted at shutdown
    assert closing < 3  # the shutdown budget (0.5 s) bounds close(), not the database


def _ready(url: str, process: subprocess.Popen) -> bool:
    assert process.poll() is None, "API process exited"
    try:
        return httpx.get(url + "/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def test_api_logs_every_prediction_and_loses_none_on_shutdown(trained: TrainedStack) -> None:
    s = trained.settings
    materialize(s, JAN)
    before_alias = production_version(s)
    version = trained.baseline.version
    promote(s, version=version, force=True, by="test_prediction_log")
    with db.connect(db.target(s), s) as conn:
        users = [
            r[0] for r in conn.execute("SELECT user_id FROM user_snapshots WHERE as_of = %s LIMIT 60", (JAN,))
        ]
        last_id = conn.execute("SELECT coalesce(max(id), 0) FROM prediction_log").fetchone()[0]
        # The latest drift report (in the far future): the API must export its share as a gauge.
        report = conn.execute(
            "INSERT INTO drift_reports (reference_as_of, current_as_of, feature_service, drift_share,"
            " drifted_features, report_html, report_json, details)"
            " VALUES ('2999-11-30', '2999-12-31', 'churn_v1', 0.4242, '{}', '', '', '{}') RETURNING id"
        ).fetchone()[0]
        conn.commit()

    port = free_port()
    # A long flush interval (Settings.prediction_log_flush_interval_s): only the shutdown flush writes the tail.
    env = server_env(s, port) | {"STREAMFLOW_PREDICTION_LOG_FLUSH_INTERVAL_S": "60"}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamflow.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("the API is ready", lambda: _ready(url, process), 180)

        local = threading.local()

        def client() -> httpx.Client:  # one per thread: creating an httpx client costs ~60 ms here
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=url, timeout=30)
                clients.append(local.client)
            return local.client

        def single(user: str) -> list[dict]:
            r = client().post("/predict", json={"user_id": user})
            assert r.status_code == 200, r.text
            return [r.json()]

        def batch(chunk: list[str]) -> list[dict]:
            r = client().post("/predict/batch", json={"user_ids": [*chunk, "0000-NOBODY"]})
            assert r.status_code == 200, r.text
            return [x for x in r.json()["results"] if "probability" in x]

        clients: list[httpx.Client] = []
        with ThreadPoolExecutor(8) as pool:
            singles = [pool.submit(single, users[i % len(users)]) for i in range(240)]
            batches = [pool.submit(batch, users[i : i + 20]) for i in range(0, 60, 20)]
            answered = [x for f in singles + batches for x in f.result()]
        for c in clients:
            c.close()
        with httpx.Client(base_url=url, timeout=10) as c:
            wait_for(
                "the drift gauge follows the report",
                lambda: _metric(c.get("/metrics").text, "streamflow_drift_share") == pytest.approx(0.4242),
                15,
                interval=0.2,
            )
            metrics = c.get("/metrics").text
        process.send_signal(signal.SIGINT)  # graceful: in-flight requests finish, then the lifespan flushes
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        with db.connect(db.target(s), s) as conn:
            conn.execute("DELETE FROM drift_reports WHERE id = %s", (report,))
            conn.commit()
        use_mlflow(s)
        if before_alias is not None:
            mlflow.MlflowClient().set_registered_model_alias(
                s.model_name, s.production_alias, str(before_alias)
            )

    rows = _rows(s, "id > %s ORDER BY id", (last_id,))
    assert len(answered) == 240 + 60
    assert len(rows) == len(answered), (
        f"{len(rows)} rows for {len(answered)} predictions; "
        f"pending before shutdown: {_metric(metrics, 'streamflow_prediction_log_pending')}"
    )
    assert _metric(metrics, "streamflow_prediction_log_dropped_total") == 0
    assert {r[2] for r in rows} == {"predict", "batch"} and sum(r[2] == "batch" for r in rows) == 60
    # Each row is what the API answered: same user, version, probability and prediction.
    logged = sorted((r[3], r[5], round(r[6], 12), r[7]) for r in rows)
    expected = sorted((x["user_id"], version, round(x["probability"], 12), x["prediction"]) for x in answered)
    assert logged == expected
    assert {r[8] for r in rows} == {datetime(2024, 1, 31, tzinfo=UTC)}  # the features' as_of
    assert _metric(metrics, "streamflow_prediction_log_pending") > 0  # the tail waited for the shutdown
