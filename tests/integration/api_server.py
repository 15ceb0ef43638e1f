"""`streamflow serve` as a real subprocess for the API tests: start, wait until it answers, read its
log, stop it with Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from streamflow.settings import Settings

TOKEN = "test-admin-token"
POLL_S = 0.5  # the API's model/materialization poll interval in these tests


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        """Everything the server wrote to stderr so far (its log)."""
        return self.log_path.read_text(errors="replace")

    def connect(self, timeout: float = 30.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.settimeout(timeout)
        return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(settings: Settings, port: int) -> dict[str, str]:
    # As from a fresh shell: importing Feast in this process set a PROMETHEUS_MULTIPROC_DIR.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMFLOW_", "PROMETHEUS_MULTIPROC"))}
    env |= {
        "STREAMFLOW_STATE_DIR": str(settings.state_dir),
        "STREAMFLOW_DATABASE_NAME": settings.database_name,
        "STREAMFLOW_ADMIN_TOKEN": TOKEN,
        "STREAMFLOW_MODEL_POLL_INTERVAL_S": str(POLL_S),
        "STREAMFLOW_API_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    if settings.embedded_pg_dir:
        env["STREAMFLOW_EMBEDDED_PG_DIR"] = str(settings.embedded_pg_dir)
    if settings.database_url:
        env["STREAMFLOW_DATABASE_URL"] = settings.database_url
    return env


def wait_for(what: str, done: Callable[[], bool], seconds: float, interval: float = 0.05) -> None:
    """Poll ``done`` until it holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(interval)


def _answers(url: str, path: str, process: subprocess.Popen) -> bool:
    assert process.poll() is None, "API process exited"
    try:
        return httpx.get(url + path, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def serving(
    settings: Settings,
    *args: str,
    env: dict[str, str] | None = None,
    ready: str = "/ready",
    cache_on: bool = True,
) -> Iterator[Server]:
    """`streamflow serve` in a subprocess, answering 200 on ``ready`` (and, with ``cache_on``, with
    its online cache on); its stderr goes to a file (``Server.log``)."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix=f"streamflow-serve-{port}-", suffix=".log")[1])
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamflow.cli", "serve", "--port", str(port), *args],
            env=server_env(settings, port) | (env or {}),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"
    server = Server(url, port, process, log)
    try:
        wait_for(f"{ready} answering 200", lambda: _answers(url, ready, process), 180, interval=0.3)
        if cache_on:  # the cache switches on once its listener is confirmed
            wait_for(
                "online cache on",
                lambda: httpx.get(url + "/ready", timeout=5).json()["online_cache"] == "on",
                30,
                interval=0.1,
            )
        yield server
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.unlink(missing_ok=True)


def metric(text: str, prefix: str) -> float:
    """Sum of the samples whose line starts with ``prefix`` (a name, or a name and its labels)."""
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(prefix))
