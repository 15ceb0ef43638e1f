"""The embedded server's lifecycle, in one process as the CLI and tests drive it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamflow import db
from streamflow.settings import Settings


def test_embedded_server_stops_and_starts_again_in_process(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, database_name="lifecycle")
    t = db.target(settings)
    assert db.embedded_running(settings)
    try:
        assert db.stop_embedded(settings) and not db.embedded_running(settings)
        db.start_embedded(settings)  # a cached handle must not pretend the stopped server still runs
        assert db.embedded_running(settings)
        with db.connect(t, settings) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        db.stop_embedded(settings)


def test_external_server_is_used_when_configured(settings_factory) -> None:
    if not os.environ.get("STREAMFLOW_TEST_DATABASE_URL"):
        pytest.skip("STREAMFLOW_TEST_DATABASE_URL not set")
    settings = settings_factory("external")
    t = db.target(settings)
    assert not t.host.startswith("/") and t.dbname.startswith("sf_test_")
