"""The prediction API over real HTTP: real PostgreSQL, Feast online store and MLflow registry."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest

from streamflow import db
from streamflow.features.config import feature_store, reset_feature_stores
from streamflow.features.definitions import feature_spec
from streamflow.features.materialize import materialize
from streamflow.registry import promote
from streamflow.settings import Settings
from streamflow.training.models import to_model_input
from streamflow.training.tracking import use_mlflow
from tests.integration.api_server import POLL_S, TOKEN, Server, serving, wait_for
from tests.integration.api_server import metric as _samples
from tests.integration.conftest import FEB, JAN, TrainedStack


@dataclass
class Api:
    url: str
    settings: Settings
    stack: TrainedStack
    server: Server

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    @property
    def user(self) -> str:
        return self.stack.months.user


@pytest.fixture(scope="module")
def api(trained: TrainedStack) -> Iterator[Api]:
    settings = trained.settings
    materialize(settings, JAN)
    promote(settings, version=trained.baseline.version, force=True, by="test_api")
    with serving(settings) as server:
        yield Api(server.url, settings, trained, server)


def csv_values(api: Api, month: str, user_id: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("subscriptions", "usage_agg_30d", "payments_agg_90d", "support_agg_90d"):
        out |= next(r for r in api.stack.months.rows(month, name) if r["user_id"] == user_id)
    return out


def reference_probability(settings: Settings, version: int, features: dict) -> float:
    """What the registered scikit-learn pipeline says for these feature values."""
    use_mlflow(settings)
    mv = mlflow.MlflowClient().get_model_version(settings.model_name, str(version))
    spec = feature_spec(mv.tags["feature_service"])
    pipeline = mlflow.sklearn.load_model(f"models:/{settings.model_name}/{version}")
    frame = pd.DataFrame([{n: features[n] for n in spec.names}])
    return float(pipeline.predict_proba(to_model_input(frame, spec))[:, 1][0])


def test_health_and_ready(api: Api) -> None:
    with api.client() as c:
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/ready").json() == {
            "status": "ready",
            "model_version": api.stack.baseline.version,
            "online_cache": "on",
        }


def test_served_features_equal_the_stored_month(api: Api) -> None:
    expected = csv_values(api, "2024-01-31", api.user)
    with api.client() as c:
        body = c.get(f"/features/{api.user}").json()
    spec = feature_spec("churn_v1")
    assert body["user_id"] == api.user and set(body["features"]) == set(spec.names)
    f = body["features"]
    booleans = {"True": True, "False": False}
    assert f["monthly_fee"] == float(expected["monthly_fee"])
    assert f["watch_hours_30d"] == float(expected["watch_hours_30d"])
    assert (
        f["months_active"] == int(expected["months_active"]) and f["net_service"] == expected["net_service"]
    )
    assert f["plan_stream_tv"] is booleans[expected["plan_stream_tv"]]
    assert f["paperless_billing"] is booleans[expected["paperless_billing"]]
    assert body["as_of"] == "2024-01-31T00:00:00Z"


def test_predict_matches_the_reference_pipeline(api: Api) -> None:
    with api.client() as c:
        body = c.post("/predict", json={"user_id": api.user}).json()
    assert body["model"] == {"name": "streamflow_churn", "version": api.stack.baseline.version}
    assert body["threshold"] == api.stack.baseline.threshold
    assert body["prediction"] == int(body["probability"] >= body["threshold"])
    reference = reference_probability(api.settings, api.stack.baseline.version, body["features_used"])
    assert abs(body["probability"] - reference) <= 1e-6


def test_unknown_user_is_404_with_missing_features(api: Api) -> None:
    with api.client() as c:
        response = c.post("/predict", json={"user_id": "999999"})
        features = c.get("/features/999999")
    assert response.status_code == 404
    assert response.json() == {
        "error": "Missing features for user_id=999999",
        "code": "unknown_user",
        "missing_features": list(feature_spec("churn_v1").names),
    }
    assert features.status_code == 404 and features.json()["missing_features"] == list(feature_spec().names)


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": ""},
        {"user_id": "x" * 65},
        {"user_id": "bad id!"},
        {"user_id": 12},
        {},
        {"user": "7590-VHVEG"},
    ],
    ids=["empty", "too-long", "bad-characters", "not-a-string", "no-field", "wrong-field"],
)
def test_malformed_requests_are_422(api: Api, body: dict) -> None:
    with api.client() as c:
        response = c.post("/predict", json=body)
    assert response.status_code == 422
    assert response.json()["error"].startswith("invalid request:")


def test_malformed_json_and_bad_path_ids(api: Api) -> None:
    with api.client() as c:
        broken = c.post("/predict", content=b'{"user_id": ', headers={"content-type": "application/json"})
        not_utf8 = c.post("/predict", content=b"\xff\r\xfe", headers={"content-type": "application/json"})
        long_path = c.get("/features/" + "x" * 65)
    assert broken.status_code == 422 and long_path.status_code == 422
    assert not_utf8.status_code == 422 and not_utf8.json()["error"].startswith("invalid request")


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", 'Application/JSON;Charset="UTF-8"'],
)
def test_json_with_or_without_charset_is_answered_alike(api: Api, content_type: str) -> None:
    headers = {"content-type": content_type}
    with api.client() as c:
        one = c.post("/predict", content=f'{{"user_id": "{api.user}"}}', headers=headers)
        batch = c.post("/predict/batch", content=f'{{"user_ids": ["{api.user}"]}}', headers=headers)
    assert one.status_code == batch.status_code == 200, (one.text, batch.text)
    assert batch.json()["results"][0]["probability"] == one.json()["probability"]


def test_batch_answers_every_id(api: Api) -> None:
    other = next(
        r["user_id"] for r in api.stack.months.rows("2024-01-31", "users") if r["user_id"] != api.user
    )
    with api.client() as c:
        body = c.post("/predict/batch", json={"user_ids": [api.user, "0000-NOBODY", other]}).json()
        single = c.post("/predict", json={"user_id": other}).json()
        too_many = c.post(
            "/predict/batch", json={"user_ids": [api.user] * (api.settings.predict_batch_max + 1)}
        )
    first, unknown, third = body["results"]
    assert first["user_id"] == api.user and first["prediction"] in (0, 1)
    assert (
        unknown["error"] == "Missing features for user_id=0000-NOBODY"
        and len(unknown["missing_features"]) == 14
    )
    assert abs(third["probability"] - single["probability"]) <= 1e-6
    assert too_many.status_code == 422


def test_model_endpoint(api: Api) -> None:
    with api.client() as c:
        body = c.get("/model").json()
    assert body["name"] == "streamflow_churn" and body["alias"] == "production"
    assert body["version"] == api.stack.baseline.version and body["run_id"] == api.stack.baseline.run_id
    assert body["trained_as_of"] == "2024-01-31" and body["feature_service"] == "churn_v1"
    assert body["metrics"]["roc_auc"] == pytest.approx(api.stack.baseline.metrics["roc_auc"])
    assert body["fast_path_max_abs_diff"] <= 1e-5


def test_metrics_count_routes_and_outcomes_without_user_ids(api: Api) -> None:
    with api.client() as c:
        c.post("/predict", json={"user_id": api.user})
        c.post("/predict", json={"user_id": "999999"})
        text = c.get("/metrics").text
    assert 'streamflow_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'streamflow_http_requests_total{method="POST",route="/predict",status="404"}' in text
    assert 'streamflow_missing_features_total{kind="unknown_user"}' in text
    for status in ("200", "404"):  # latency by route and status
        assert (
            f'streamflow_http_request_duration_seconds_count{{method="POST",route="/predict",status="{status}"}}'
            in text
        )
    assert f"streamflow_model_version {float(api.stack.baseline.version)}" in text
    # No label carries a user id (numbers such as 0.0199999 may contain the digits, so look at labels).
    assert f'"{api.user}"' not in text and '"999999"' not in text and "user_id=" not in text


def test_metrics_add_up_over_several_workers(api: Api, tmp_path: Path) -> None:
    """With --workers 2 a scrape reaches one worker, yet answers for both together."""
    inherited = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}  # another process's folder: not ours to use
    with serving(api.settings, "--workers", "2", env=inherited) as server:
        url = server.url
        metrics_dir = api.settings.state_dir.resolve() / "metrics" / f"serve-{server.process.pid}"

        def predict(_: int) -> int:  # a new connection each time, several at once: both workers answer
            return httpx.post(url + "/predict", json={"user_id": api.user}, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(predict, range(40))) == {200}
        for _ in range(6):
            text = httpx.get(url + "/metrics", timeout=10).text
            route = 'streamflow_http_requests_total{method="POST",route="/predict",status="200"}'
            assert _samples(text, route) == 40
            assert _samples(text, "streamflow_predictions_total{") == 40
            assert f"streamflow_model_version {float(api.stack.baseline.version)}" in text
        assert metrics_dir.is_dir() and not any(tmp_path.iterdir())
    assert not metrics_dir.exists()  # the workers' metric files go with the server


def test_admin_reload_requires_the_token(api: Api) -> None:
    with api.client() as c:
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["version"] == api.stack.baseline.version


def _metric(c: httpx.Client, name: str) -> float:
    line = next(x for x in c.get("/metrics").text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


def _served(c: httpx.Client, path: str, done, seconds: float = 2.0) -> httpx.Response:
    """The first answer of ``path`` for which ``done`` holds; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done(r := c.get(path)):
        assert time.monotonic() < deadline, f"{path} still answers {r.status_code} {r.text[:300]}"
        time.sleep(0.02)
    return r


def _user_changed_in_february(api: Api) -> tuple[str, float, float]:
    def hours(month: str) -> dict[str, str]:
        return {r["user_id"]: r["watch_hours_30d"] for r in api.stack.months.rows(month, "usage_agg_30d")}

    jan, feb = hours("2024-01-31"), hours("2024-02-29")
    user = next(u for u in sorted(feb) if jan.get(u) not in (None, "", feb[u]) and feb[u])
    return user, float(jan[user]), float(feb[user])


def test_feature_cache_follows_every_materialization(api: Api) -> None:
    """Served from memory, yet a materialization (forward, then back) is visible at once."""
    user, jan_hours, feb_hours = _user_changed_in_february(api)
    path = f"/features/{user}"
    with api.client() as c:
        first = c.get(path).json()
        hits = _metric(c, "streamflow_online_cache_hits_total")
        assert c.get(path).json() == first and first["features"]["watch_hours_30d"] == jan_hours
        assert _metric(c, "streamflow_online_cache_hits_total") == hits + 1  # from memory
        try:
            materialize(api.settings, FEB)
            body = _served(c, path, lambda r: r.json()["as_of"] == "2024-02-29T00:00:00Z").json()
            assert body["features"]["watch_hours_30d"] == feb_hours
            predicted = c.post("/predict", json={"user_id": user}).json()
            assert predicted["features_used"] == body["features"]
            reference = reference_probability(api.settings, api.stack.baseline.version, body["features"])
            assert abs(predicted["probability"] - reference) <= 1e-6  # not the January answer, memoised
        finally:
            materialize(api.settings, JAN, force=True)
        body = _served(c, path, lambda r: r.json()["as_of"] == "2024-01-31T00:00:00Z").json()
        assert body == first


def test_feature_cache_sees_writes_of_the_feast_sdk(api: Api) -> None:
    """Any writer of the online tables invalidates the cache, even of a user it knew as unknown."""
    user = "CACHE-0001"
    with api.client() as c:
        assert c.get(f"/features/{user}").status_code == 404
        assert c.get(f"/features/{user}").status_code == 404  # remembered as unknown
        feature_store(api.settings).write_to_online_store(
            "payments_90d",
            pd.DataFrame(
                [{"user_id": user, "as_of_ts": datetime(2024, 1, 31, tzinfo=UTC), "failed_payments_90d": 3}]
            ),
        )
        body = _served(c, f"/features/{user}", lambda r: r.status_code == 200).json()
    assert body["features"] == {"failed_payments_90d": 3}


def test_incomplete_and_stale_features_are_422(api: Api) -> None:
    store = feature_store(api.settings)
    old = datetime(2023, 1, 31, tzinfo=UTC)
    usage = {
        "watch_hours_30d": 1.0,
        "avg_session_mins_7d": 1.0,
        "unique_devices_30d": 1,
        "skips_7d": 0,
        "rebuffer_events_7d": 0,
    }
    store.write_to_online_store(
        "usage_30d",
        pd.DataFrame([{"user_id": "PARTIAL-0001", "as_of_ts": datetime(2024, 1, 31, tzinfo=UTC), **usage}]),
    )
    store.write_to_online_store(
        "usage_30d", pd.DataFrame([{"user_id": "STALE-0001", "as_of_ts": old, **usage}])
    )
    for view, values in {
        "subscription_profile": {
            "months_active": 3,
            "monthly_fee": 20.0,
            "total_paid": 60.0,
            "paperless_billing": True,
            "plan_stream_tv": True,
            "plan_stream_movies": False,
            "net_service": "DSL",
            "contract_type": "One year",
        },
        "payments_90d": {"failed_payments_90d": 0},
        "support_90d": {"support_tickets_90d": 0, "ticket_avg_resolution_hrs_90d": 1.0},
    }.items():
        store.write_to_online_store(
            view, pd.DataFrame([{"user_id": "STALE-0001", "as_of_ts": old, **values}])
        )
    with api.client() as c:
        partial = c.post("/predict", json={"user_id": "PARTIAL-0001"})
        stale = c.post("/predict", json={"user_id": "STALE-0001"})
    assert partial.status_code == 422
    assert set(partial.json()["missing_features"]) == set(feature_spec().names) - set(usage)
    assert stale.status_code == 422
    assert (
        set(stale.json()["stale_features"]) == set(feature_spec().names)
        and stale.json()["missing_features"] == []
    )


def test_hot_swap_under_load_fails_no_request(api: Api) -> None:
    base, cand = api.stack.baseline.version, api.stack.candidate.version
    with api.client() as c:
        features = {v: c.get(f"/features/{api.user}").json()["features"] for v in (base,)}[base]
    expected = {base: reference_probability(api.settings, base, features)}
    v2 = feature_spec("churn_v2")
    with api.client() as c:
        full = (
            feature_store(api.settings)
            .get_online_features(features=list(v2.refs), entity_rows=[{"user_id": api.user}])
            .to_dict()
        )
    expected[cand] = reference_probability(api.settings, cand, {n: full[n][0] for n in v2.names})

    results: list[tuple[int, dict]] = []
    stop = threading.Event()

    def hammer() -> None:
        with api.client() as c:
            while not stop.is_set():
                r = c.post("/predict", json={"user_id": api.user})
                results.append((r.status_code, r.json()))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()

    def answered(version: int) -> int:
        return sum(b.get("model", {}).get("version") == version for _, b in list(results))

    try:
        wait_for("the baseline answers under load", lambda: answered(base) >= 20, 30)
        promote(api.settings, version=cand, force=True, by="test_api")
        # The swap is seen within a few registry polls, then the candidate keeps answering under load.
        wait_for("the candidate answers under load", lambda: answered(cand) >= 20, 15)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        promote(api.settings, version=base, force=True, by="test_api")
    assert [s for s, _ in results if s != 200] == []
    versions = {b["model"]["version"] for _, b in results}
    assert versions == {base, cand}
    for _, body in results:  # each response was computed entirely by the version it names
        assert abs(body["probability"] - expected[body["model"]["version"]]) <= 1e-6


def test_openapi_contract(api: Api) -> None:
    """Schemathesis against the app's own OpenAPI: never a 5xx, every response matches the schema."""
    st = Path(sys.executable).with_name("st")
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    result = subprocess.run(
        [
            str(st),
            "run",
            f"{api.url}/openapi.json",
            "--checks",
            checks,
            "--max-examples",
            "30",
            "--phases",
            "examples,coverage,fuzzing",
            "--suppress-health-check",
            "all",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_online_store_outage_is_503_then_recovers(api: Api) -> None:
    """Stop PostgreSQL under load: answers become 503 within the timeout, saying in one line what is
    down, then 200 again by themselves; the log gets one warning per dependency going down and one
    coming back, no traceback."""
    if api.settings.database_url:
        pytest.skip("stopping an external server is not this test's business")
    budget = api.settings.online_timeout_s + 2.0
    logged = len(api.server.log())
    db.stop_embedded(api.settings)
    try:
        with api.client(timeout=budget + 5) as c:
            for _ in range(3):
                started = time.monotonic()
                r = c.post("/predict", json={"user_id": api.user})
                assert r.status_code == 503, r.text
                assert time.monotonic() - started < budget
                assert_one_line_outage(r.json())
            ready = c.get("/ready")
            assert ready.status_code == 503 and ready.json()["reasons"] == ["online_store_unavailable"]
            # Three model polls later it is still down: the API never restarts a server someone stopped,
            # and its feature cache stays off without the server's change notifications.
            until = time.monotonic() + 3 * POLL_S
            while time.monotonic() < until:
                assert c.post("/predict", json={"user_id": api.user}).status_code == 503
            assert not db.embedded_running(api.settings)
            wait_for(
                "the registry poll sees the outage", lambda: "model registry" in api.server.log()[logged:], 10
            )
    finally:
        db.start_embedded(api.settings)
        reset_feature_stores()  # this test process's cached Feast objects held connections to the old server
    with api.client() as c:
        wait_for(
            "the API recovers after PostgreSQL comes back",
            lambda: c.post("/predict", json={"user_id": api.user}).status_code == 200,
            30,
            interval=0.5,
        )
    assert_one_outage_logged(api.server, logged, ("online store", "model registry"))


OUTAGE = re.compile(r"online store \(PostgreSQL at [^()]+\) (did not answer within 2 s|failed: \w+: .+)")


def assert_one_line_outage(body: dict) -> None:
    """A 503 that says what is down, in one line, with something after any colon."""
    assert body["code"] == "online_store_unavailable", body
    assert OUTAGE.fullmatch(body["error"]) and "\n" not in body["error"], body


def assert_one_outage_logged(server: Server, since: int, names: tuple[str, ...]) -> None:
    """Once the dependencies are back: exactly one 'is down' and one 'is back' line for each."""

    def lines() -> list[str]:
        return server.log()[since:].splitlines()

    def back(name: str) -> bool:
        return any(name in x and " is back " in x for x in lines())

    for name in names:
        wait_for(f"{name} logged as back", lambda name=name: back(name), 15)
    log = server.log()[since:]
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    for name in names:
        down = [x for x in lines() if x.startswith("WARNING") and name in x and " is down: " in x]
        up = [x for x in lines() if x.startswith("WARNING") and name in x and " is back " in x]
        assert len(down) == 1 and len(up) == 1, log[-3000:]
