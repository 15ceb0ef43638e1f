"""The Prefect flows on a real (test-harness) Prefect server, over the real stack."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from streamflow import settings as settings_module
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


@pytest.mark.parametrize("decision", ["promoted", "rejected"])
def test_monthly_pipeline_runs_every_stage(
    prefect_server: None, env_settings: TrainedStack, monkeypatch: pytest.MonkeyPatch, decision: str
) -> None:
    """The inputs decide the gate: an alias of the test's own that no version holds yet (promoted), or
    one the baseline holds with a margin no candidate can reach (rejected)."""
    import mlflow
    from prefect.client.orchestration import get_client

    from streamflow.flows import monthly_pipeline
    from streamflow.training.tracking import use_mlflow

    alias = f"flows_{decision}_{uuid.uuid4().hex[:8]}"  # not @production: the registry tests own that one
    monkeypatch.setenv("STREAMFLOW_PRODUCTION_ALIAS", alias)
    use_mlflow(env_settings.settings)
    client = mlflow.MlflowClient()
    name = env_settings.settings.model_name
    if decision == "rejected":
        monkeypatch.setenv("STREAMFLOW_PROMOTION_MARGIN", "1.0")
        client.set_registered_model_alias(name, alias, str(env_settings.baseline.version))
    settings_module.get_settings.cache_clear()
    try:
        result = monthly_pipeline(
            str(env_settings.months.feb), "2024-02-29", model_type="logreg", feature_service="churn_v2"
        )
        holder = int(client.get_model_version_by_alias(name, alias).version)
    finally:
        client.delete_registered_model_alias(name, alias)

    users = env_settings.months.users("2024-02-29")
    assert result["ingested"] == dict.fromkeys(result["ingested"], users) and len(result["ingested"]) == 6
    mv = client.get_model_version(name, str(result["candidate"]))
    assert mv.tags["as_of"] == "2024-02-29" and mv.tags["gate_decision"] == decision
    assert result["reason"] == mv.tags["gate_reason"]
    if decision == "promoted":
        assert result["reason"] == "no production version yet" and holder == result["candidate"]
    else:
        assert result["reason"].startswith("candidate ") and "does not beat production" in result["reason"]
        assert holder == env_settings.baseline.version

    async def flow_runs() -> list:
        async with get_client() as client:
            return await client.read_flow_runs()

    runs = asyncio.run(flow_runs())
    assert any(r.name and r.state and r.state.is_completed() for r in runs)
