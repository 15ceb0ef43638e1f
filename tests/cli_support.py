"""Running the real ``streamflow`` command in a subprocess, as a user would, against a test database.

The child's environment is the test's alone: no inherited ``STREAMFLOW_*``, MLflow or Prefect
variable, the working directory a temporary folder (so no developer's ``.env`` is read).
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from streamflow.settings import Settings

STREAMFLOW = str(Path(sys.executable).with_name("streamflow"))
_INHERITED = ("STREAMFLOW_", "MLFLOW_", "PREFECT_", "PROMETHEUS_MULTIPROC", "prometheus_multiproc")


def free_ports(count: int = 1) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment of a shell whose STREAMFLOW_* variables describe ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED)}
    env |= {
        "STREAMFLOW_STATE_DIR": str(settings.state_dir),
        "STREAMFLOW_DATABASE_NAME": settings.database_name,
    }
    if settings.embedded_pg_dir:
        env["STREAMFLOW_EMBEDDED_PG_DIR"] = str(settings.embedded_pg_dir)
    if settings.database_url:
        env["STREAMFLOW_DATABASE_URL"] = settings.database_url
    # Free ports by default: a test must never meet another session's servers.
    api, mlflow, prefect = free_ports(3)
    env |= {
        "STREAMFLOW_API_PORT": str(api),
        "STREAMFLOW_MLFLOW_PORT": str(mlflow),
        "STREAMFLOW_PREFECT_PORT": str(prefect),
    }
    # To show that a test fails on other code (e.g. the previous commit's `src`), point
    # STREAMFLOW_TEST_CLI_SRC at that folder: the child processes import streamflow from there.
    if os.environ.get("STREAMFLOW_TEST_CLI_SRC"):
        env["PYTHONPATH"] = os.environ["STREAMFLOW_TEST_CLI_SRC"]
    return env | extra


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"streamflow {' '.join(self.args)} -> {self.code} in {self.seconds:.2f} s\n"
            f"--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"
        )


def run(env: dict[str, str], *args: str, cwd: Path, timeout: float = 600, module: bool = False) -> Result:
    """``streamflow ARGS`` (or ``python -m streamflow ARGS``) to completion."""
    command = [sys.executable, "-m", "streamflow", *args] if module else [STREAMFLOW, *args]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return Result(tuple(args), done.returncode, done.stdout, done.stderr, time.perf_counter() - started)


def assert_one_line_error(r: Result, contains: str, code: int = 2) -> None:
    """Exit ``code``, nothing on stdout, exactly one line on stderr: ``error: ...<contains>...``."""
    lines = r.stderr.splitlines()
    assert r.code == code, r
    assert len(lines) == 1 and lines[0].startswith("error: "), r
    assert contains in lines[0], r
    assert r.stdout == "", r
    assert "Traceback" not in r.stderr, r


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def tree(pid: int) -> set[int]:
    """``pid`` and every live descendant of it."""
    try:
        p = psutil.Process(pid)
        return {pid, *(c.pid for c in p.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def alive(pids: Iterable[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class _NotPrefect(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def not_prefect_server() -> Iterator[int]:
    """Something that answers /api/health with 200 on a free port, and is not Prefect: its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotPrefect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
