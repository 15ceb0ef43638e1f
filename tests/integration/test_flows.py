"""The Prefect flows on a real (test-harness) Prefect server, over the real stack."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from streamflow import settings as settings_module
from tests.conftest import MONTHS
from tests.integration.conftest import TrainedStack


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    # One temporary server for the module; 60 s as in Prefect's own CI (30 s times out on slow machines).
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def env_settings(trained: TrainedStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[TrainedStack]:
    """Flows read Settings from the environment, as a deployment run would."""
    s = trained.settings
    monkeypatch.setenv("STREAMFLOW_STATE_DIR", str(s.state_dir))
    monkeypatch.setenv("STREAMFLOW_DATABASE_NAME", s.database_name)
    if s.embedded_pg_dir:
        monkeypatch.setenv("STREAMFLOW_EMBEDDED_PG_DIR", str(s.embedded_pg_dir))
    if s.database_url:
        monkeypatch.setenv("STREAMFLOW_DATABASE_URL", s.database_url)
    settings_module.get_settings.cache_clear()
    yield trained
    settings_module.get_settings.cache_clear()


def test_monthly_pipeline_runs_every_stage(prefect_server: None, env_settings: TrainedStack) -> None:
    import mlflow
    from prefect.client.orchestration import get_client

    from streamflow.flows import monthly_pipeline
    from streamflow.training.tracking import use_mlflow

    result = monthly_pipeline(
        str(MONTHS["2024-02-29"]), "2024-02-29", model_type="logreg", feature_service="churn_v2"
    )

    assert result["ingested"] == dict.fromkeys(result["ingested"], 7043) and len(result["ingested"]) == 6
    use_mlflow(env_settings.settings)
    mv = mlflow.MlflowClient().get_model_version(env_settings.settings.model_name, str(result["candidate"]))
    assert mv.tags["as_of"] == "2024-02-29" and mv.tags["gate_decision"] in ("promoted", "rejected")
    assert result["reason"] == mv.tags["gate_reason"]

    async def flow_runs() -> list:
        async with get_client() as client:
            return await client.read_flow_runs()

    runs = asyncio.run(flow_runs())
    assert any(r.name and r.state and r.state.is_completed() for r in runs)


def test_contract_violations_are_not_retried(tmp_path) -> None:
    """Retrying cannot fix bad data: the retry condition says no for ContractError only."""
    from prefect.states import Failed

    from streamflow.data.validate import ContractError, Violation
    from streamflow.flows import _retry_unless_bad_data

    bad = Failed(data=ContractError(tmp_path, [Violation("labels.csv", "file is missing")]))
    flaky = Failed(data=ConnectionError("server closed the connection"))
    assert _retry_unless_bad_data(None, None, bad) is False
    assert _retry_unless_bad_data(None, None, flaky) is True
