"""Browser check: the native stack as a person sees it, in headless Chromium.

``run_demo`` builds the whole stack in a temporary state folder (embedded PostgreSQL, Prefect
server, ingest, Feast, training, promotion) and serves it. While it is up, Chromium renders the
MLflow UI (experiments, the runs of ``streamflow_churn``, the registered model and its alias), the
Prefect UI (flow runs) and the API's /docs. Each page's DOM, dumped after its JavaScript ran, must
name what the stack built (an HTTP 200 proves nothing for a single-page app), and a screenshot of
each lands in ``screenshots/`` at the repository root (git-ignored) for a person to look at.

Chromium resolves no host but 127.0.0.1: the pages must render from this machine alone.

Needs Debian's ``chromium`` on PATH (skipped otherwise). Builds on the real exports when ../shared has
them, on generated months otherwise. Takes a few minutes: it ingests two months and trains two models
from nothing.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from streamflow.settings import Settings, get_settings
from tests.conftest import SEEDS

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"
START = date(2024, 1, 31)
RUN_NAMES = [f"{m}-{s}-{START.isoformat()}" for m, s in (("baseline", "churn_v1"), ("logreg", "churn_v2"))]
FLOWS = ("ingest_month", "materialize", "train", "promote")
# Virtual time: Chromium runs the page's timers and fetches this far, then dumps or draws. Single
# page apps that keep polling never go idle, so this is the only "done" there is.
BUDGET_MS = 15_000
ATTEMPTS = 3  # a page short of a name is rendered again with a doubled budget
CHROME_TIMEOUT_S = 180  # wall clock for one Chromium run (a loaded 2-core machine is slow)
PAGES = ("mlflow_experiments", "mlflow_runs", "mlflow_model", "prefect_runs", "api_docs")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _refresh_prefect() -> None:
    """Prefect reads its settings from the environment once, at import: re-read them if imported."""
    if "prefect.context" in sys.modules:
        sys.modules["prefect.context"].refresh_global_settings_context()


@pytest.fixture
def demo_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    """Settings of a stack of its own, given through the environment.

    Not only as a ``Settings`` object: the flows read ``get_settings()``, and the API and the MLflow
    UI are child processes that read ``STREAMFLOW_*`` themselves.
    """
    from streamflow import db, orchestration

    api_port, mlflow_port, prefect_port = _free_ports(3)
    for name in (
        "STREAMFLOW_DATABASE_URL",
        "STREAMFLOW_EMBEDDED_PG_DIR",
        "STREAMFLOW_MLFLOW_TRACKING_URI",
        "STREAMFLOW_ONLINE_STORE",
        "STREAMFLOW_INBOX_DIR",
        "MLFLOW_TRACKING_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    env = {
        "STREAMFLOW_STATE_DIR": str(tmp_path / "state"),
        "STREAMFLOW_DATABASE_NAME": f"sf_browser_{uuid.uuid4().hex[:8]}",
        "STREAMFLOW_API_HOST": "127.0.0.1",
        "STREAMFLOW_API_PORT": str(api_port),
        "STREAMFLOW_MLFLOW_PORT": str(mlflow_port),
        "STREAMFLOW_PREFECT_PORT": str(prefect_port),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    settings = get_settings()
    # run_demo points this process's Prefect client at its server through os.environ: set the same
    # values first, so that monkeypatch puts back whatever was there before.
    for name, value in orchestration.prefect_env(settings).items():
        monkeypatch.setenv(name, value)
    _refresh_prefect()
    try:
        yield settings
    finally:
        orchestration.stop(settings)  # run_demo has done it unless it failed early: then a no-op
        db.stop_embedded(settings)
        monkeypatch.undo()
        get_settings.cache_clear()
        _refresh_prefect()


class Browser:
    """Headless Chromium: one process per page, each with a fresh profile."""

    def __init__(self, binary: str, work_dir: Path) -> None:
        self.binary = binary
        self.work_dir = work_dir

    def _run(self, url: str, budget_ms: int, *extra: str) -> subprocess.CompletedProcess[str]:
        profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=self.work_dir))
        command = [
            self.binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            # Nothing leaves the machine: a page that needs another host fails here as it would
            # for a user without internet access.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--window-size=1400,1000",
            "--hide-scrollbars",
            # Lay out and paint before dumping: lazily rendered lists (Prefect's runs) appear only then.
            "--run-all-compositor-stages-before-draw",
            f"--virtual-time-budget={budget_ms}",
            *extra,
            url,
        ]
        try:
            return subprocess.run(
                command, capture_output=True, text=True, timeout=CHROME_TIMEOUT_S, check=False
            )
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    def text(self, url: str, budget_ms: int) -> str:
        """The words of the rendered page body after its JavaScript ran (tags and scripts dropped)."""
        result = self._run(url, budget_ms, "--dump-dom")
        assert result.returncode == 0, f"chromium --dump-dom {url} failed:\n{result.stderr[-2000:]}"
        # The body only: a <title> names the page before anything rendered.
        dom = re.sub(r"(?is)<(head|script|style|svg|noscript)\b.*?</\1>", " ", result.stdout)
        return " ".join(html.unescape(re.sub(r"(?s)<[^>]+>", " ", dom)).split())

    def screenshot(self, url: str, path: Path, budget_ms: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        result = self._run(url, budget_ms, f"--screenshot={path}")
        assert result.returncode == 0 and path.exists(), f"no screenshot of {url}:\n{result.stderr[-2000:]}"


def check_page(browser: Browser, url: str, name: str, expected: list[str]) -> list[str]:
    """Render ``url`` until it shows every expected string; screenshot it; return the problems."""
    text, missing, budget = "", list(expected), BUDGET_MS
    for _ in range(ATTEMPTS):
        text = browser.text(url, budget)
        missing = [e for e in expected if e not in text]
        if not missing:
            break
        budget *= 2
    browser.screenshot(url, SCREENSHOTS / f"{name}.png", budget)
    if not missing:
        return []
    return [f"{name} ({url}) does not show {missing}; it shows:\n  {text[:1500]}"]


def check_mlflow(browser: Browser, settings: Settings) -> list[str]:
    base = f"http://127.0.0.1:{settings.mlflow_port}"
    name, alias = settings.model_name, settings.production_alias
    api = f"{base}/ajax-api/2.0/mlflow"
    experiment = httpx.get(f"{api}/experiments/get-by-name", params={"experiment_name": name}, timeout=30)
    experiment.raise_for_status()
    experiment_id = experiment.json()["experiment"]["experiment_id"]
    holder = httpx.get(f"{api}/registered-models/alias", params={"name": name, "alias": alias}, timeout=30)
    holder.raise_for_status()
    version = holder.json()["model_version"]["version"]

    problems = check_page(browser, f"{base}/#/experiments", "mlflow_experiments", [name])
    problems += check_page(
        browser, f"{base}/#/experiments/{experiment_id}/runs", "mlflow_runs", [name, *RUN_NAMES]
    )
    model_url = f"{base}/#/models/{name}"
    model_problems = check_page(
        browser, model_url, "mlflow_model", [name, f"Version {version}", f"@ {alias}"]
    )
    if not model_problems:
        # The alias chip ("@ production", a non-breaking space) sits in the row of the version
        # that holds it; a gate tag's text ("holds @production") has no space.
        text = browser.text(model_url, BUDGET_MS)
        row = re.search(rf"Version {version}\b(.*?)(?=Version \d|$)", text)
        if not row or f"@ {alias}" not in row.group(1):
            model_problems = [f"mlflow_model: @{alias} is not shown on version {version}:\n  {text[:1500]}"]
    return problems + model_problems


def check_prefect(browser: Browser, settings: Settings) -> list[str]:
    base = f"http://127.0.0.1:{settings.prefect_port}"
    flows = httpx.post(f"{base}/api/flows/filter", json={}, timeout=30)
    flows.raise_for_status()
    flow_names = {f["id"]: f["name"] for f in flows.json()}
    runs = httpx.post(
        f"{base}/api/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 10}, timeout=30
    )
    runs.raise_for_status()
    # Each row of the runs list reads "<flow> <run name>" (the flow is a link, then the run).
    rows = [f"{flow_names[r['flow_id']]} {r['name']}" for r in runs.json()]
    problems = [f"prefect: no run of flow {f!r} in the API" for f in FLOWS if f not in flow_names.values()]
    return problems + check_page(browser, f"{base}/runs", "prefect_runs", [*FLOWS, *rows])


def check_docs(browser: Browser, settings: Settings) -> list[str]:
    url = f"http://{settings.api_host}:{settings.api_port}/docs"
    page = httpx.get(url, timeout=30)
    page.raise_for_status()
    problems = check_page(
        browser, url, "api_docs", ["StreamFlow churn API", "POST /predict", "/predict /batch"]
    )
    remote = sorted(
        {
            src
            for src in re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
            if urlsplit(src).hostname not in (None, "127.0.0.1", "localhost")
        }
    )
    if problems and remote:
        problems.append(
            "api_docs: /docs loads its page from other hosts, so it is blank without internet access "
            f"(as on this project's machines): {remote}. Serve Swagger UI's files from the API itself."
        )
    return problems


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not on PATH (apt-get install chromium)")
@pytest.mark.timeout(3600)
def test_browser_shows_the_stack(demo_settings: Settings, tmp_path: Path) -> None:
    from streamflow.demo import run_demo

    assert CHROMIUM is not None
    for name in PAGES:
        (SCREENSHOTS / f"{name}.png").unlink(missing_ok=True)
    browser = Browser(CHROMIUM, tmp_path)
    problems: list[str] = []
    checked: list[str] = []

    def while_up() -> None:  # run_demo calls this with everything serving, then stops it all
        for check in (check_mlflow, check_prefect, check_docs):
            problems.extend(check(browser, demo_settings))
            checked.append(check.__name__)

    saved = dict(os.environ)  # run_demo exports its settings for its flows and servers: undo that after
    try:
        seeds = SEEDS if SEEDS.is_dir() else None  # None: the demo generates its months
        result = run_demo(demo_settings, seeds, START, users=7043, fresh=False, serve=True, wait=while_up)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()

    assert set(result["versions"]) == {"baseline", "logreg"}
    assert checked == ["check_mlflow", "check_prefect", "check_docs"]
    assert not problems, "\n\n".join(problems)
    for name in PAGES:
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000, f"{name}.png looks blank"
