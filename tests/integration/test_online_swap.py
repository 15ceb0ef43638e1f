"""The bulk online writer on a real PostgreSQL, with generated months (no real data needed).

Every materialization builds new online tables and swaps them in. These tests hold it to Feast's own
writer (same rows, same tables), to its readers (never an empty or mixed table, Feast still reads
and writes the swapped tables) and to the API's cache invalidation (one NOTIFY per swap commit).
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from feast import FeatureStore
from psycopg import sql

from streamflow import db
from streamflow.data.generate import generate_months
from streamflow.data.ingest import ingest_month
from streamflow.features.apply import apply
from streamflow.features.config import FEAST_SCHEMA, ONLINE_CHANNEL, ONLINE_TRIGGER, feature_store
from streamflow.features.definitions import FEATURE_VIEWS, feature_spec
from streamflow.features.materialize import materialize, plan_materialization
from streamflow.features.online_read import online_features
from streamflow.features.online_writer import signature
from streamflow.settings import Settings
from tests.conftest import BACKENDS

USERS = 600
VIEWS = [fv.name for fv in FEATURE_VIEWS]


@pytest.fixture(scope="module", params=BACKENDS)
def generated(
    request: pytest.FixtureRequest,
    settings_factory: Callable[[str], Settings],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Settings, list[tuple[Path, date]]]:
    """A database holding two generated months (users come and go between them)."""
    settings = settings_factory(request.param)
    months = generate_months(tmp_path_factory.mktemp("months"), users=USERS, months=2, seed=11)
    for folder, as_of in months:
        ingest_month(folder, as_of, settings)
    return settings, months


@contextlib.contextmanager
def project_store(settings: Settings) -> Iterator[FeatureStore]:
    """A Feast project of its own (its own online tables), applied, removed afterwards."""
    project = f"sf_test_{uuid.uuid4().hex[:10]}"
    store = feature_store(settings, project=project)
    try:
        apply(settings, store)
        yield store
    finally:
        store.registry.delete_project(project)
        with db.connect(db.target(settings), settings, autocommit=True) as conn:
            for view in VIEWS:
                conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(
                        sql.Identifier(FEAST_SCHEMA, _table(store, view))
                    )
                )
            conn.execute("DELETE FROM materializations WHERE project = %s", (project,))


def _table(store: FeatureStore, view: str) -> str:
    return f"{store.project}_{view}"


def _rows(settings: Settings, store: FeatureStore) -> dict[str, list[tuple[Any, ...]]]:
    with db.connect(db.target(settings), settings) as conn:
        return {
            v: conn.execute(
                sql.SQL("SELECT * FROM {} ORDER BY entity_key, feature_name").format(
                    sql.Identifier(FEAST_SCHEMA, _table(store, v))
                )
            ).fetchall()
            for v in VIEWS
        }


def _signatures(settings: Settings, store: FeatureStore) -> dict[str, str]:
    """Each online table's catalog description, its project's name replaced by a placeholder."""
    with db.connect(db.target(settings), settings) as conn:
        out = {}
        for v in VIEWS:
            oid = conn.execute(
                "SELECT %s::regclass::oid", (f"{FEAST_SCHEMA}.{_table(store, v)}",)
            ).fetchone()[0]
            out[v] = repr(signature(conn, oid)).replace(store.project, "<project>")
        return out


def _feast_write(store: FeatureStore, plan: Any) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # Feast's progress bars
        store.materialize(plan.window_start, plan.window_end)


def _corrected_copy(folder: Path, out: Path) -> Path:
    """The month again with some fees corrected (a re-exported month)."""
    shutil.copytree(folder, out)
    path = out / "subscriptions.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows[::7]:
        row["monthly_fee"] = "12.34"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_same_rows_and_tables_as_feasts_writer_through_every_kind_of_update(
    generated: tuple[Settings, list[tuple[Path, date]]], tmp_path: Path
) -> None:
    """First load, monthly update, rollback, corrected month: after each, the swapped-in tables hold
    exactly the rows Feast's own writer leaves in tables that went through the same windows, and are
    the same tables (columns, constraints, indexes, triggers) as Feast's."""
    settings, [(jan_dir, jan), (_, feb)] = generated
    with project_store(settings) as bulk, project_store(settings) as feast:
        signatures = _signatures(settings, feast)
        assert _signatures(settings, bulk) == signatures

        steps = [(jan, "first"), (feb, "incremental"), (jan, "rollback"), (feb, "reingested")]
        for as_of, reason in steps:
            if reason == "reingested":
                ingest_month(_corrected_copy(jan_dir, tmp_path / "jan_fixed"), jan, settings)
            plan = plan_materialization(settings, as_of, bulk)
            assert plan.reason == reason
            result = materialize(settings, as_of, bulk)
            assert result.plan == plan and result.rows > 0
            _feast_write(feast, plan)
            bulk_rows, feast_rows = _rows(settings, bulk), _rows(settings, feast)
            for v in VIEWS:
                assert bulk_rows[v] == feast_rows[v], (reason, v)
            assert result.online_rows <= sum(len(r) for r in bulk_rows.values())
            assert _signatures(settings, bulk) == signatures, reason
        # The rollback and the corrected month kept users that only the later month has (Feast's end state).
        assert len(bulk_rows["user_profile"]) > 4 * USERS


def test_feast_reads_and_writes_swapped_tables(generated: tuple[Settings, list[tuple[Path, date]]]) -> None:
    settings, [_, (_, feb)] = generated
    with project_store(settings) as store:
        with db.connect(db.target(settings), settings, autocommit=True) as conn:  # a grant to keep
            conn.execute(
                sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(
                    sql.Identifier(FEAST_SCHEMA, _table(store, VIEWS[0]))
                )
            )
        result = materialize(settings, feb, store)
        with db.connect(db.target(settings), settings) as conn:
            assert conn.execute(
                "SELECT has_table_privilege('public', %s, 'SELECT')",
                (f"{FEAST_SCHEMA}.{_table(store, VIEWS[0])}",),
            ).fetchone()[0]
            triggers = conn.execute(
                "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " WHERE c.relname = ANY(%s) AND t.tgname = %s",
                ([_table(store, v) for v in VIEWS], ONLINE_TRIGGER),
            ).fetchone()[0]
            assert triggers == len(VIEWS)  # the API's change notification is on every swapped-in table
        before = _rows(settings, store)
        _feast_write(store, result.plan)  # Feast's upserts into the swapped tables (ON CONFLICT on the key)
        assert _rows(settings, store) == before
        some = [row[0] for row in before["usage_30d"][:: 40 * 5]][:10]
        assert some  # entity keys; read users back through Feast's reader instead
        with db.connect(db.target(settings), settings) as conn:
            ids = [
                r[0]
                for r in conn.execute("SELECT user_id FROM usage_snapshots WHERE as_of = %s LIMIT 5", (feb,))
            ]
        rows = online_features(store, ids, "churn_v2")
        assert all(r["found"] and not r["missing"] for r in rows)
        assert {n for n in rows[0]["features"]} == set(feature_spec("churn_v2").names)


def _state(conn: psycopg.Connection, store: FeatureStore, feb: date) -> tuple[Any, ...]:
    """What a reader sees of all online tables in one statement (one snapshot): rows, and rows of
    the February snapshot, per table."""
    parts = [
        sql.SQL(
            "(SELECT count(*) FROM {t}), (SELECT count(*) FROM {t} WHERE event_ts = %(feb)s::date::timestamptz)"
        ).format(t=sql.Identifier(FEAST_SCHEMA, _table(store, v)))
        for v in VIEWS
    ]
    return tuple(
        conn.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(parts)), {"feb": feb}).fetchone()
    )


def test_readers_see_the_old_or_the_new_tables_never_empty_or_mixed(
    generated: tuple[Settings, list[tuple[Path, date]]],
) -> None:
    settings, [(_, jan), (_, feb)] = generated
    with project_store(settings) as store:
        materialize(settings, jan, store)
        seen: list[tuple[Any, ...]] = []
        done = threading.Event()
        errors: list[BaseException] = []

        def read() -> None:  # as the API reads: autocommit, one statement over the tables
            try:
                with db.connect(db.target(settings), settings, autocommit=True) as conn:
                    while True:
                        finished = done.is_set()
                        seen.append(_state(conn, store, feb))
                        if finished:
                            return
            except BaseException as exc:  # reported below
                errors.append(exc)

        with db.connect(db.target(settings), settings, autocommit=True) as conn:
            before = _state(conn, store, feb)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            materialize(settings, feb, store)
        finally:
            done.set()
            reader.join(timeout=60)
        assert not reader.is_alive() and not errors
        with db.connect(db.target(settings), settings, autocommit=True) as conn:
            after = _state(conn, store, feb)
        assert before != after and all(before[2 * i] > 0 for i in range(len(VIEWS)))
        assert set(seen) <= {before, after}, set(seen) - {before, after}
        assert seen[0] == before and seen[-1] == after and len(seen) > 2


def test_swap_waits_for_a_reader_and_retries(generated: tuple[Settings, list[tuple[Path, date]]]) -> None:
    """A transaction that holds a table for longer than the swap's lock timeout delays the swap (each
    attempt gives up, readers queued behind it go on) until it ends; nothing fails."""
    settings, [(_, jan), (_, feb)] = generated
    with project_store(settings) as store:
        materialize(settings, jan, store)
        result: list[Any] = []
        with (
            db.connect(db.target(settings), settings) as holder,
            db.connect(db.target(settings), settings, autocommit=True) as watcher,
        ):
            holder.execute(
                sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(FEAST_SCHEMA, _table(store, VIEWS[2]))
                )
            )
            writer = threading.Thread(
                target=lambda: result.append(materialize(settings, feb, store)), daemon=True
            )
            writer.start()
            waits, waiting, deadline = 0, False, time.monotonic() + 60
            while waits < 3 and time.monotonic() < deadline:  # seen waiting, then not, three times: retries
                now = watcher.execute(
                    "SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE NOT l.granted AND l.mode = 'AccessExclusiveLock' AND a.datname = current_database())"
                ).fetchone()[0]
                waits += now and not waiting
                waiting = now
            assert waits >= 3 and not result  # still waiting for the holder
            assert _state(watcher, store, feb)[1] == 0  # readers are not blocked for good: old tables
            holder.rollback()
            writer.join(timeout=60)
        assert result and result[0].plan.reason == "incremental"
        with db.connect(db.target(settings), settings, autocommit=True) as conn:
            assert _state(conn, store, feb)[1] > 0


def test_one_notify_per_swap_commit(generated: tuple[Settings, list[tuple[Path, date]]]) -> None:
    settings, [(_, jan), (_, feb)] = generated
    with (
        project_store(settings) as store,
        psycopg.Connection.connect(db.target(settings).conninfo(), autocommit=True) as listener,
    ):
        listener.execute(f"LISTEN {ONLINE_CHANNEL}")
        list(listener.notifies(timeout=0.2))  # apply's own notice, if it arrived late

        def received() -> list[str]:
            return [n.payload for n in listener.notifies(timeout=0.5)]

        materialize(settings, jan, store, show_progress=True)
        assert received() == [",".join(_table(store, v) for v in VIEWS)]
        assert materialize(settings, jan, store).skipped  # nothing written: nothing sent
        assert received() == []
        materialize(settings, feb, store)
        assert len(received()) == 1


def test_redis_is_written_by_feast(generated: tuple[Settings, list[tuple[Path, date]]]) -> None:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    pg_settings, [(_, jan), (_, feb)] = generated
    settings = pg_settings.model_copy(
        update={"online_store": "redis", "redis_url": "redis://127.0.0.1:6379/0"}
    )
    project = f"sf_test_{uuid.uuid4().hex[:10]}"
    store = feature_store(settings, project=project)
    try:
        apply(settings, store)
        first = materialize(settings, jan, store, show_progress=True)
        update = materialize(settings, feb, store)
        assert (first.plan.reason, update.plan.reason) == ("first", "incremental")
        assert update.rows > 0 and update.online_rows == 0  # Feast's writer, not the tables'
        with db.connect(db.target(settings), settings) as conn:
            ids = [
                r[0]
                for r in conn.execute("SELECT user_id FROM usage_snapshots WHERE as_of = %s LIMIT 5", (feb,))
            ]
            hours = dict(
                conn.execute(
                    "SELECT user_id, watch_hours_30d FROM usage_snapshots WHERE as_of = %s AND user_id = ANY(%s)",
                    (feb, ids),
                ).fetchall()
            )
        rows = online_features(store, ids)
        assert all(r["found"] for r in rows)
        assert {r["user_id"]: r["features"]["watch_hours_30d"] for r in rows} == hours
    finally:
        keys = list(client.scan_iter(match=b"*" + project.encode()))
        if keys:
            client.delete(*keys)
        store.registry.delete_project(project)
        with db.connect(db.target(settings), settings, autocommit=True) as conn:
            conn.execute("DELETE FROM materializations WHERE project = %s", (project,))
