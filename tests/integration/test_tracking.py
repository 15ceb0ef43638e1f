"""Where MLflow records runs: each Settings its own store, whatever was used before in the process."""

from __future__ import annotations

import os
from collections.abc import Callable

import mlflow

from streamflow.settings import Settings
from streamflow.training.tracking import tracking_uri, use_mlflow


def test_a_second_database_gets_its_own_tracking_store(settings_factory: Callable[[str], Settings]) -> None:
    """MLflow exports the URI it is given to MLFLOW_TRACKING_URI; StreamFlow must not then read it back
    as the user's choice (for the next Settings, or in a child process such as an API server)."""
    first, second = settings_factory("embedded"), settings_factory("embedded")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    use_mlflow(first)
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == tracking_uri(first)
    assert tracking_uri(second) != tracking_uri(first)
    assert second.database_name in tracking_uri(second)
    use_mlflow(second)
    assert mlflow.get_tracking_uri() == tracking_uri(second)
