"""The API's HTTP edges over a real `streamflow serve` and real PostgreSQL, on generated data (no
model needed): half-sent and oversized requests, clients hanging up, HEAD, the bearer scheme,
content types, an outage, and a feature store that was never applied.

Raw sockets send what a well-behaved client never would; every wait is a poll with a deadline.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from streamflow import db
from streamflow.data.generate import generate_months
from streamflow.data.ingest import ingest_month
from streamflow.features.apply import apply
from streamflow.features.config import reset_feature_stores
from streamflow.features.materialize import materialize
from streamflow.settings import Settings
from tests.integration.api_server import POLL_S, TOKEN, Server, metric, serving, wait_for

TIMEOUT_S = 2.0  # STREAMFLOW_API_REQUEST_TIMEOUT_S of these servers
KEEP_ALIVE_S = 5.0  # uvicorn's, as serving/server.py sets it
SLACK_S = 1.5  # what a loaded 2-core machine may add to a deadline
ONLINE_TIMEOUT = re.compile(
    r"online store \(PostgreSQL at [^()]+\) (did not answer within 2 s|failed: \w+: .+)"
)
LIMITS = {"STREAMFLOW_API_REQUEST_TIMEOUT_S": str(TIMEOUT_S)}


@dataclass
class Light:
    server: Server
    settings: Settings
    user: str  # a user with online features

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.server.url + path, timeout=10, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.server.url + path, timeout=10, **kw)

    def metrics(self) -> str:
        return self.get("/metrics").text


@pytest.fixture(scope="module")
def light(
    settings_factory: Callable[[str], Settings], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Light]:
    """A server over one generated month, applied and materialized; no model (training is not the point)."""
    settings = settings_factory("embedded")
    (folder, as_of), *_ = generate_months(tmp_path_factory.mktemp("months"), 300, 1, seed=7)
    ingest_month(folder, as_of, settings)
    apply(settings)
    materialize(settings, as_of)
    user = (folder / "users.csv").read_text().splitlines()[1].split(",")[0]
    with serving(settings, env=LIMITS, ready="/health", cache_on=False) as server:
        light = Light(server, settings, user)
        wait_for("online features served", lambda: light.get(f"/features/{user}").status_code == 200, 30)
        yield light


# --------------------------------------------------------------------------- raw HTTP


def closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Read until the server closes the connection; (seconds it took, what it sent). Fails past ``seconds``."""
    started, data = time.monotonic(), b""
    while True:
        left = started + seconds - time.monotonic()
        if left <= 0:
            raise AssertionError(f"connection still open after {seconds} s; received {data[:200]!r}")
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # closed with unread bytes of ours: the answer was sent before
            chunk = b""
        if not chunk:
            return time.monotonic() - started, data
        data += chunk


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


PREDICT_HEAD = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"

HALF_SENT = {
    "request line": (b"POST /predi", "headers_timeout"),
    "headers": (PREDICT_HEAD + b"Content-Length: 40\r\n", "headers_timeout"),
    "body": (PREDICT_HEAD + b'Content-Length: 40\r\n\r\n{"user_id": ', "body_timeout"),
}


@pytest.mark.parametrize("phase", list(HALF_SENT))
def test_half_sent_requests_are_answered_408_and_closed(light: Light, phase: str) -> None:
    """20 at once: each gets 408 and is closed within the configured time of its first byte."""
    sent, reason = HALF_SENT[phase]
    rejected = f'streamflow_http_rejected_total{{reason="{reason}"}}'
    timed_out = 'streamflow_http_requests_total{method="POST",route="/predict",status="408"}'
    before = light.metrics()
    socks = [light.server.connect() for _ in range(20)]
    started = time.monotonic()
    for s in socks:
        s.sendall(sent)
    for s in socks:
        _, got = closed_within(s, TIMEOUT_S + SLACK_S - (time.monotonic() - started))
        assert status_of(got) == 408 and b'"code":"request_timeout"' in got, got
        s.close()
    assert time.monotonic() - started >= TIMEOUT_S - 0.1  # not before its time either
    after = light.metrics()
    assert metric(after, rejected) - metric(before, rejected) == 20
    # A request the app was already reading is also counted on its route, as a 408.
    assert metric(after, timed_out) - metric(before, timed_out) == (20 if phase == "body" else 0)
    assert "Traceback" not in light.server.log()


def test_a_trickled_request_is_closed_at_its_deadline(light: Light) -> None:
    """A byte every 0.2 s keeps the connection busy but never finishes: 408 at the deadline."""
    sock = light.server.connect()
    started = time.monotonic()
    with contextlib.suppress(OSError):
        for byte in b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100:
            if select.select([sock], [], [], 0)[0]:  # the server answered
                break
            assert time.monotonic() - started < TIMEOUT_S + SLACK_S, "still no answer"
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
    _, got = closed_within(sock, TIMEOUT_S + SLACK_S)
    assert TIMEOUT_S - 0.1 <= time.monotonic() - started < TIMEOUT_S + SLACK_S + 0.3
    assert status_of(got) == 408, got


def test_a_silent_connection_is_closed_after_the_keep_alive_timeout(light: Light) -> None:
    sock = light.server.connect()
    seconds, got = closed_within(sock, KEEP_ALIVE_S + SLACK_S)
    assert got == b"" and seconds >= KEEP_ALIVE_S - 0.5


def test_a_keep_alive_connection_is_not_cut_between_requests(light: Light) -> None:
    """The deadline is per request: requests on one connection for longer than it are all answered."""
    with httpx.Client(base_url=light.server.url, timeout=10) as c:
        until = time.monotonic() + TIMEOUT_S * 2
        while time.monotonic() < until:
            assert c.get("/health").status_code == 200
            time.sleep(0.3)


def test_oversized_bodies_are_413(light: Light) -> None:
    limit = light.settings.api_max_body_bytes
    before = light.metrics()
    # Declared too long: refused before the body is read (the app never sees it).
    sock = light.server.connect()
    sock.sendall(PREDICT_HEAD + b"Content-Length: 20000000\r\n\r\n" + b"x" * 65536)
    _, got = closed_within(sock, SLACK_S)
    assert status_of(got) == 413 and b'"code":"body_too_large"' in got, got
    # Chunked, so only counted as it arrives: refused once past the limit.
    sock = light.server.connect()
    sock.sendall(PREDICT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    with contextlib.suppress(OSError):  # the server may close before we are done
        for _ in range(limit // 65536 + 2):
            sock.sendall(b"10000\r\n" + b"x" * 65536 + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
    _, got = closed_within(sock, SLACK_S + 1)
    assert status_of(got) == 413, got
    after = light.metrics()
    reason = 'streamflow_http_rejected_total{reason="body_too_large"}'
    assert metric(after, reason) - metric(before, reason) == 2
    on_route = 'streamflow_http_requests_total{method="POST",route="/predict",status="413"}'
    assert metric(after, on_route) - metric(before, on_route) == 1  # the chunked one had reached the app
    # At the limit it is read and answered as usual (here: no model).
    body = b'{"user_id": "%s", "pad": "' % light.user.encode()
    body += b"x" * (limit - len(body) - 2) + b'"}'
    assert len(body) == limit
    answer = light.post("/predict", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 503 and answer.json()["code"] == "no_model"


def test_oversized_headers_are_431(light: Light) -> None:
    sock = light.server.connect()
    with contextlib.suppress(OSError):
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 1_000_000)
    _, got = closed_within(sock, SLACK_S + 1)
    assert status_of(got) == 431 and b'"code":"headers_too_large"' in got, got


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_a_client_hanging_up_mid_body_is_499_without_traceback(light: Light, path: str) -> None:
    key = f'streamflow_http_requests_total{{method="POST",route="{path}",status="499"}}'
    server_errors = f'streamflow_http_requests_total{{method="POST",route="{path}",status="500"}}'
    before = light.metrics()
    logged = len(light.server.log())
    sock = light.server.connect()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n".encode())
    sock.sendall(b'Content-Length: 100\r\n\r\n{"user_id')
    time.sleep(0.2)  # the app is reading the body
    sock.close()
    wait_for("a 499 counted", lambda: metric(light.metrics(), key) == metric(before, key) + 1, 5)
    assert metric(light.metrics(), server_errors) == metric(before, server_errors)
    log = light.server.log()[logged:]
    assert "Traceback" not in log and "ERROR" not in log, log


# --------------------------------------------------------------------------- HTTP semantics


def get_paths(light: Light) -> list[str]:
    """Every GET route of the OpenAPI (a sample user for path parameters), and the documentation pages."""
    spec = light.get("/openapi.json").json()
    paths = [re.sub(r"\{[^}]+\}", light.user, p) for p, ops in spec["paths"].items() if "get" in ops]
    return [*paths, "/metrics", "/openapi.json", "/docs", "/redoc"]


def test_head_answers_wherever_get_does(light: Light) -> None:
    paths = get_paths(light)
    assert {"/health", "/ready", "/model", f"/features/{light.user}"} <= set(paths)
    for path in paths:
        got = light.get(path)
        head = httpx.head(light.server.url + path, timeout=10)
        assert head.status_code == got.status_code != 405, (path, head.status_code, got.status_code)
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
    assert httpx.head(light.server.url + "/health").headers["content-length"] == str(len(b'{"status":"ok"}'))
    assert httpx.head(light.server.url + "/predict").status_code == 405  # a POST-only route
    assert 'streamflow_http_requests_total{method="HEAD",route="/health",status="200"}' in light.metrics()


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (f"Bearer {TOKEN}", 200),
        (f"bearer {TOKEN}", 200),
        (f"BEARER {TOKEN}", 200),
        (f"Bearer   {TOKEN}", 200),
        (TOKEN, 401),  # a bare token: no scheme
        (f"Basic {TOKEN}", 401),
        (f"Token {TOKEN}", 401),
        ("Bearer", 401),
        ("Bearer wrong", 401),
        (f"Bearer{TOKEN}", 401),
        (None, 401),
    ],
)
def test_admin_takes_the_bearer_scheme_in_any_case_and_nothing_else(
    light: Light, authorization: str | None, status: int
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    r = light.post("/admin/reload", headers=headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.json()["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"


CONTENT_TYPES = {
    "application/json": True,
    "application/json; charset=utf-8": True,
    "application/json;charset=UTF-8": True,
    'APPLICATION/JSON; charset="utf-8"': True,
    "application/json; charset=latin-1": False,
    "text/plain": False,
    "application/x-www-form-urlencoded": False,
    "application/vnd.api+json": False,
    None: False,
}


@pytest.mark.parametrize("content_type", list(CONTENT_TYPES), ids=lambda c: str(c))
def test_predict_and_batch_take_the_same_content_types(light: Light, content_type: str | None) -> None:
    """JSON, with or without a UTF-8 charset, is read (here: 503, no model); anything else is 415."""
    headers = {"content-type": content_type} if content_type else {}
    one = light.post("/predict", content=f'{{"user_id": "{light.user}"}}'.encode(), headers=headers)
    batch = light.post(
        "/predict/batch", content=f'{{"user_ids": ["{light.user}"]}}'.encode(), headers=headers
    )
    expected = (503, "no_model") if CONTENT_TYPES[content_type] else (415, "unsupported_media_type")
    assert (one.status_code, one.json()["code"]) == expected, one.text
    assert (batch.status_code, batch.json()["code"]) == expected, batch.text


def test_malformed_json_is_422_on_both_routes(light: Light) -> None:
    for path in ("/predict", "/predict/batch"):
        r = light.post(path, content=b'{"user_id": ', headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text


# --------------------------------------------------------------------------- dependencies


def test_outage_says_what_is_down_and_logs_one_warning_each_way(light: Light) -> None:
    """Stop PostgreSQL: /features and /ready say in one line which store did not answer; the log
    gets one warning when each dependency goes down and one when it is back, and no traceback."""
    if light.settings.database_url:
        pytest.skip("stopping an external server is not this test's business")
    server, user = light.server, light.user
    logged = len(server.log())
    db.stop_embedded(light.settings)
    try:
        for _ in range(5):  # the cache is off without the server's notifications: each one is a read
            r = light.get(f"/features/{user}")
            assert r.status_code == 503, r.text
            assert r.json()["code"] == "online_store_unavailable"
            assert ONLINE_TIMEOUT.fullmatch(r.json()["error"]), r.json()
        ready = light.get("/ready").json()
        assert ready["code"] == "not_ready" and "online_store_unavailable" in ready["reasons"], ready
        assert ready["error"].count("online store (PostgreSQL at ") == 1 and "\n" not in ready["error"]
        # Several registry polls fail meanwhile (each one used to log an MLflow traceback).
        wait_for("registry outage logged", lambda: "model registry" in server.log()[logged:], 10 * POLL_S + 5)
        time.sleep(4 * POLL_S)
    finally:
        db.start_embedded(light.settings)
        reset_feature_stores()
    wait_for("features served again", lambda: light.get(f"/features/{user}").status_code == 200, 30, 0.2)
    for name in ("online store", "model registry"):
        wait_for(
            f"{name} logged as back",
            lambda name=name: any(
                f"{name} (" in x and " is back " in x for x in server.log()[logged:].splitlines()
            ),
            15,
        )
    lines = server.log()[logged:].splitlines()
    log = "\n".join(lines)
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    for name in ("online store", "model registry"):
        down = [x for x in lines if x.startswith("WARNING") and f"{name} (" in x and " is down: " in x]
        back = [x for x in lines if x.startswith("WARNING") and f"{name} (" in x and " is back " in x]
        assert (len(down), len(back)) == (1, 1), log[-3000:]
    assert any("online store (PostgreSQL at " in x for x in lines)


def test_a_feature_store_never_applied_is_a_setup_error_not_an_outage(
    settings_factory: Callable[[str], Settings], tmp_path: Path
) -> None:
    """Before `features apply`: 503 with its own code and the command to run, on /features and
    /ready; no SQL in the answer."""
    settings = settings_factory("embedded")
    with serving(settings, ready="/health", cache_on=False) as server:
        features = httpx.get(server.url + "/features/0000-NOBODY", timeout=10)
        ready = httpx.get(server.url + "/ready", timeout=10)
        log = server.log()
    expected = {
        "error": "feature store not applied: run `streamflow features apply`",
        "code": "feature_store_not_applied",
    }
    assert features.status_code == 503 and features.json() == expected
    assert ready.status_code == 503 and "feature_store_not_applied" in ready.json()["reasons"]
    assert expected["error"] in ready.json()["error"]
    for text in (features.text, ready.text):
        assert "SELECT" not in text and "UndefinedTable" not in text and "LINE 1" not in text
    assert "Traceback" not in log
