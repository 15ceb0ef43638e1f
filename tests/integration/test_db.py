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


@pytest.fixture(params=["embedded", "external"])
def handle_settings(request: pytest.FixtureRequest, settings_factory) -> Settings:
    if request.param == "external" and not os.environ.get("STREAMFLOW_TEST_DATABASE_URL"):
        pytest.skip("STREAMFLOW_TEST_DATABASE_URL not set")
    return settings_factory(request.param)


def test_one_handle_per_process_resolves_the_target_once(handle_settings: Settings, monkeypatch) -> None:
    first = db.database(handle_settings)
    created = []
    monkeypatch.setattr(db, "ensure_database", lambda *a: created.append(a))
    assert db.database(handle_settings) is first and db.target(handle_settings) == first.target
    assert db.prepare(handle_settings) is first and created == []  # no second round trip
    with first.connection() as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "schema_migrations" in tables  # prepare migrated the schema


def test_pooled_connections_commit_roll_back_and_come_back_reset(handle_settings: Settings) -> None:
    handle = db.database(handle_settings)
    with handle.connection() as conn:
        conn.execute("CREATE TABLE pool_probe (n int)")
        conn.execute("INSERT INTO pool_probe VALUES (1)")
    with pytest.raises(RuntimeError), handle.connection() as conn:
        conn.execute("INSERT INTO pool_probe VALUES (2)")
        raise RuntimeError("the block failed")
    with handle.connection(autocommit=True) as conn:
        conn.execute("SET work_mem = '77MB'")
        conn.execute("INSERT INTO pool_probe VALUES (3)")
    with handle.connection() as conn:
        assert not conn.autocommit and conn.execute("SHOW work_mem").fetchone() != ("77MB",)
        assert [r[0] for r in conn.execute("SELECT n FROM pool_probe ORDER BY n")] == [1, 3]


def test_a_dropped_pooled_connection_is_replaced(handle_settings: Settings) -> None:
    handle = db.database(handle_settings)
    with handle.connection() as conn:
        pid = conn.info.backend_pid
    with db.connect(handle.target, handle_settings, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with handle.connection() as conn:  # the pool checks a connection before handing it out
        assert conn.execute("SELECT 1").fetchone() == (1,)
