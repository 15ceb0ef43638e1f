"""The real ``streamflow demo`` process, stopped the way people stop it: Ctrl-C (SIGINT to the demo).

One signal stops everything the demo started (API, MLflow UI, Prefect server, and the embedded
PostgreSQL when the demo started it); a PostgreSQL that was already running stays up and the demo
says so; a second signal during the shutdown changes nothing; a Prefect port answered by something
else stops the demo at once with one line.

Generated months (500 users) in a state folder of the module's own, free ports through the settings.
The second run reuses what the first built, as a second `make demo` does.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from streamflow import db
from streamflow.settings import Settings
from tests.cli_support import STREAMFLOW, alive, cli_env, listening, not_prefect_server, run, tree, wait_until

READY_S = 900  # from nothing to served predictions on a loaded 2-core machine
STOP_S = 120


@dataclass
class Demo:
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        def seen() -> bool:
            assert self.process.poll() is None or text in self.output(), self.output()[-4000:]
            return text in self.output()

        wait_until(seen, timeout, f"demo output {text!r}", interval=0.5)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict[str, str], Path]]:
    """A state folder with its own embedded PostgreSQL, and the shell environment pointing at it."""
    root = tmp_path_factory.mktemp("demo")
    settings = Settings(_env_file=None, state_dir=root / "state")
    yield settings, cli_env(settings), root
    if db.embedded_running(settings):  # a failed test must not leave a server behind
        db.stop_embedded(settings)


def start_demo(env: dict[str, str], cwd: Path, name: str) -> Demo:
    log = cwd / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [STREAMFLOW, "demo", "--users", "500"], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
    return Demo(process, log)


def postmaster(settings: Settings) -> int:
    return int((settings.pg_dir / "postmaster.pid").read_text().splitlines()[0])


def serving(settings: Settings, env: dict[str, str], demo: Demo) -> set[int]:
    """Wait until the demo serves; return every process it runs (its descendants)."""
    demo.wait_for("StreamFlow is running", READY_S)
    api = f"http://127.0.0.1:{env['STREAMFLOW_API_PORT']}"
    assert httpx.get(f"{api}/ready", timeout=10).status_code == 200
    for port in ("STREAMFLOW_API_PORT", "STREAMFLOW_MLFLOW_PORT", "STREAMFLOW_PREFECT_PORT"):
        assert listening(int(env[port])), port
    processes = tree(demo.process.pid) - {demo.process.pid}
    assert len(processes) >= 4, processes  # API, MLflow's server and uvicorn, Prefect server
    return processes


def assert_all_stopped(env: dict[str, str], processes: set[int]) -> None:
    assert wait_until(lambda: not alive(processes), 30, "every process the demo started to exit")
    for port in ("STREAMFLOW_API_PORT", "STREAMFLOW_MLFLOW_PORT", "STREAMFLOW_PREFECT_PORT"):
        assert not listening(int(env[port])), port


def test_one_ctrl_c_stops_everything_the_demo_started(state: tuple[Settings, dict[str, str], Path]) -> None:
    settings, env, cwd = state
    assert not db.embedded_running(settings)
    demo = start_demo(env, cwd, "first")
    try:
        processes = serving(settings, env, demo)
        pg = postmaster(settings)
        demo.process.send_signal(signal.SIGINT)
        assert demo.process.wait(timeout=STOP_S) == 0, demo.output()[-4000:]
    finally:
        if demo.process.poll() is None:
            demo.process.kill()
    out = demo.output()
    assert "stopped the MLflow UI, the API, the Prefect server, the embedded PostgreSQL" in out, out[-3000:]
    assert_all_stopped(env, processes)
    assert not alive({pg}) and not db.embedded_running(settings)


def test_a_running_postgres_stays_up_and_a_second_signal_changes_nothing(
    state: tuple[Settings, dict[str, str], Path],
) -> None:
    settings, env, cwd = state
    assert run(env, "db", "start", cwd=cwd).code == 0
    pg = postmaster(settings)
    demo = start_demo(env, cwd, "second")
    try:
        processes = serving(settings, env, demo)
        assert "already running: it stays up when the demo stops" in demo.output()
        demo.process.send_signal(signal.SIGINT)
        demo.wait_for("stopping...", 30)
        demo.process.send_signal(signal.SIGINT)  # impatient: during the shutdown
        demo.process.send_signal(signal.SIGTERM)
        assert demo.process.wait(timeout=STOP_S) == 0, demo.output()[-4000:]
    finally:
        if demo.process.poll() is None:
            demo.process.kill()
    out = demo.output()
    assert "still stopping" in out and "stopped the MLflow UI, the API, the Prefect server" in out, out[
        -3000:
    ]
    assert "left running: embedded PostgreSQL" in out, out[-3000:]
    assert_all_stopped(env, processes)
    assert alive({pg}) and psutil.Process(pg).is_running() and db.embedded_running(settings)
    assert run(env, "db", "stop", cwd=cwd).code == 0


def test_a_foreign_prefect_server_stops_the_demo(state: tuple[Settings, dict[str, str], Path]) -> None:
    settings, env, cwd = state
    with not_prefect_server() as not_prefect:
        env = env | {"STREAMFLOW_PREFECT_PORT": str(not_prefect)}
        r = run(env, "demo", "--users", "500", cwd=cwd, timeout=180)
    assert r.code == 2, r
    error = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert error == [
        f"error: 127.0.0.1:{not_prefect} is taken by something other than this state folder's Prefect server"
        " (it answers /api/health with HTTP 200 but is no Prefect server): stop it, or set"
        " STREAMFLOW_PREFECT_PORT to a free port"
    ], r
    assert "stopped the embedded PostgreSQL" in r.stdout, r
    assert not db.embedded_running(settings)
