"""The Feast store on a real PostgreSQL (and Redis): apply, materialize, online reads.

The expected values are read from the month CSVs, so "equal" means equal to what was exported.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from feast import FeatureStore
from feast.types import Bool, Int64, String
from psycopg import sql

from streamflow import db
from streamflow.data.ingest import ingest_month
from streamflow.features.apply import apply
from streamflow.features.config import FEAST_SCHEMA, feature_store, repo_config, write_feature_store_yaml
from streamflow.features.definitions import FEATURE_SERVICES, FEATURE_TTL, FEATURE_VIEWS, feature_spec
from streamflow.features.materialize import last_materialization, materialize, plan_materialization
from streamflow.features.online_read import online_features
from streamflow.features.snapshots import NoSnapshotError
from streamflow.settings import Settings
from tests.conftest import Months

JAN, FEB = date(2024, 1, 31), date(2024, 2, 29)
DTYPES = {f.name: f.dtype for fv in FEATURE_VIEWS for f in fv.features}


def _parse(name: str, raw: str) -> Any:
    if raw == "":
        return None
    dtype = DTYPES[name]
    if dtype == Bool:
        return {"True": True, "False": False}[raw]
    if dtype == Int64:
        return int(raw)
    if dtype == String:
        return raw
    return float(raw)


def expected(month_dir: Path, user_id: str) -> dict[str, Any]:
    """Every feature of ``user_id`` as exported in ``month_dir``, typed like Feast serves it."""
    return expected_many(month_dir, [user_id])[user_id]


def expected_many(month_dir: Path, user_ids: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {u: {} for u in user_ids}
    for path in month_dir.glob("*.csv"):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row["user_id"] in out:
                    out[row["user_id"]].update({k: _parse(k, v) for k, v in row.items() if k in DTYPES})
    return out


@pytest.fixture(scope="module")
def store(stack_settings: Settings) -> FeatureStore:
    store = feature_store(stack_settings)
    apply(stack_settings, store)
    return store


def online(store: FeatureStore, user_id: str, service: str = "churn_v1") -> dict[str, Any]:
    [row] = online_features(store, [user_id], service)
    assert row["user_id"] == user_id
    return row


def test_apply_is_idempotent_and_config_has_no_secrets(stack_settings: Settings, store: FeatureStore) -> None:
    again = apply(stack_settings, store)
    assert again.deleted == []
    assert sorted(v.name for v in store.list_feature_views()) == sorted(v.name for v in FEATURE_VIEWS)
    assert sorted(s.name for s in store.list_feature_services()) == sorted(FEATURE_SERVICES)
    assert len(store.get_feature_service("churn_v1").feature_view_projections) == 4
    assert store.config.registry.registry_type == "sql"
    assert store.config.offline_store.sslmode == "disable"  # local socket: Feast's "require" would hang

    yaml_text = (stack_settings.feast_dir / "feature_store.yaml").read_text()
    assert "registry_type: sql" in yaml_text
    assert "sslmode: disable" in yaml_text
    assert "project: streamflow" in yaml_text


def test_materializations_log_is_a_migration(stack_settings: Settings) -> None:
    with db.connect(db.target(stack_settings), stack_settings) as conn:
        applied = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY version")]
        assert "002_materializations.sql" in applied  # ingestion runs the migrations
        assert conn.execute("SELECT to_regclass('materializations') IS NOT NULL").fetchone()[0]


def test_generated_yaml_holds_no_credentials(stack_settings: Settings, tmp_path: Path) -> None:
    t = db.target(stack_settings)
    settings = stack_settings.model_copy(
        update={
            "state_dir": tmp_path,
            "database_url": f"postgresql://{t.user}:s3cr%40t@/{t.dbname}?host={t.host}",
            "online_store": "redis",
            "redis_url": "rediss://:r3dis@cache.example:6380/2",
        }
    )
    text = write_feature_store_yaml(settings).read_text()
    assert "s3cr" not in text and "r3dis" not in text
    assert "${STREAMFLOW_FEAST_PG_PASSWORD}" in text
    assert "cache.example:6380,db=2,ssl=true,password=${STREAMFLOW_FEAST_REDIS_PASSWORD}" in text
    config = repo_config(settings)  # in memory: the real secrets
    assert config.offline_store.password == "s3cr@t"
    assert config.registry.sqlalchemy_config_kwargs["connect_args"]["password"] == "s3cr@t"
    assert config.online_store.connection_string.endswith("password=r3dis")
    assert config.offline_store.sslmode == "disable"  # a socket folder is local


def test_materialize_serves_the_snapshot_and_is_idempotent(
    stack_settings: Settings, store: FeatureStore, months: Months
) -> None:
    users, user = months.users("2024-01-31"), months.user
    # force: other modules share this database and may have materialized already.
    first = materialize(stack_settings, JAN, store, force=True)
    assert (first.snapshot_as_of, first.plan.reason) == (JAN, "force")
    assert first.plan.window_end == datetime(2024, 1, 31, tzinfo=UTC)  # as_of_ts is midnight UTC: included
    assert (first.rows, first.users) == (len(FEATURE_VIEWS) * users, users)

    row = online(store, user)
    want = expected(months.jan, user)
    assert row["found"] and row["missing"] == []
    assert row["features"] == {n: want[n] for n in feature_spec().names}
    assert type(row["features"]["monthly_fee"]) is float
    assert isinstance(row["features"]["plan_stream_tv"], bool)
    assert row["event_timestamp"] == datetime(2024, 1, 31, tzinfo=UTC)
    wide = online(store, user, "churn_v2")["features"]
    assert wide == {n: want[n] for n in feature_spec("churn_v2").names}

    no_internet = online(store, months.no_internet_user)
    assert no_internet["found"]
    assert no_internet["features"]["plan_stream_tv"] is None
    assert no_internet["features"]["plan_stream_movies"] is None

    # Same as_of again, or a later date with no newer snapshot: nothing to write, same values.
    for as_of in (JAN, date(2024, 2, 15)):
        again = materialize(stack_settings, as_of, store)
        assert (again.snapshot_as_of, again.plan.reason, again.rows) == (JAN, "current", 0)
    assert online(store, user) == row
    recorded = last_materialization(stack_settings, store)
    assert recorded is not None and recorded.snapshot_as_of == JAN and recorded.rows == first.rows


def test_online_decimals_equal_stored_values(
    stack_settings: Settings, store: FeatureStore, months: Months
) -> None:
    """numeric(12, 2) fees are served as the closest float to the stored decimal (45.05, not
    45.050000000000004 as Arrow's decimal cast inside Feast's PostgreSQL store would give)."""
    materialize(stack_settings, JAN, store)
    rows = months.rows("2024-01-31", "subscriptions")[:500]
    fees = {r["user_id"]: r["monthly_fee"] for r in rows}
    assert any(pa.array([Decimal(v)]).cast(pa.float64())[0].as_py() != float(v) for v in fees.values())
    served = {r["user_id"]: r["features"]["monthly_fee"] for r in online_features(store, list(fees))}
    assert served == {u: float(v) for u, v in fees.items()}


def test_materialize_is_incremental_and_can_go_back(
    stack_settings: Settings, store: FeatureStore, months: Months, tmp_path: Path
) -> None:
    materialize(stack_settings, JAN, store)  # no-op when the previous test ran
    user, users = months.user, months.users("2024-02-29")
    jan = expected(months.jan, user)
    feb = expected(months.feb, user)
    assert jan["watch_hours_30d"] != feb["watch_hours_30d"]

    # February arrives after January was materialized (same data again: the shared database stays as is).
    ingest_month(months.feb, FEB, stack_settings)
    step = materialize(stack_settings, FEB, store)
    assert (step.snapshot_as_of, step.plan.reason) == (FEB, "incremental")
    assert step.plan.window_start > datetime(2024, 1, 31, tzinfo=UTC)  # only what January did not load
    assert (step.rows, step.users) == (len(FEATURE_VIEWS) * users, users)
    row = online(store, user)
    assert row["features"] == {n: feb[n] for n in feature_spec().names}
    assert row["event_timestamp"] == datetime(2024, 2, 29, tzinfo=UTC)
    assert materialize(stack_settings, FEB, store).plan.reason == "current"

    # A month the online store already reflects is corrected: the next run reloads the window. (The
    # correction is undone by ingesting the original once more: a third revision, the same values.)
    corrected = tmp_path / "corrected"
    shutil.copytree(months.jan, corrected)
    header, *rows = (corrected / "labels.csv").read_text().splitlines()
    (corrected / "labels.csv").write_text("\n".join([header, *reversed(rows)]) + "\n")  # same rows, new bytes
    ingest_month(corrected, JAN, stack_settings)
    ingest_month(months.jan, JAN, stack_settings)
    plan = plan_materialization(stack_settings, FEB, store)
    assert (plan.reason, plan.window_start) == ("reingested", datetime(2024, 2, 29, tzinfo=UTC) - FEATURE_TTL)

    back = materialize(stack_settings, JAN, store)  # an earlier as_of is served again
    assert (back.snapshot_as_of, back.plan.reason) == (JAN, "rollback")
    assert online(store, user)["features"]["watch_hours_30d"] == jan["watch_hours_30d"]


def test_bulk_online_rows_read_back_through_feast(
    stack_settings: Settings, store: FeatureStore, months: Months
) -> None:
    """After the bulk PostgreSQL writer, Feast's own get_online_features serves the exported values."""
    materialize(stack_settings, JAN, store, force=True)
    some = [
        r["user_id"] for r in months.rows("2024-01-31", "subscriptions")[:: months.users("2024-01-31") // 40]
    ]
    ids = [months.user, months.no_internet_user, *some]
    want = expected_many(months.jan, ids)
    names = feature_spec("churn_v2").names
    served = store.get_online_features(
        features=store.get_feature_service("churn_v2"), entity_rows=[{"user_id": u} for u in ids]
    ).to_dict()
    assert served["user_id"] == ids
    for i, user_id in enumerate(ids):
        assert {n: served[n][i] for n in names} == {n: want[user_id][n] for n in names}, user_id
    assert served["plan_stream_tv"][1] is None and type(served["monthly_fee"][0]) is float


def _online_rows(settings: Settings, project: str, view: str) -> list[tuple[Any, ...]]:
    with db.connect(db.target(settings), settings) as conn:
        return conn.execute(
            sql.SQL("SELECT * FROM {} ORDER BY entity_key, feature_name").format(
                sql.Identifier(FEAST_SCHEMA, f"{project}_{view}")
            )
        ).fetchall()


def test_bulk_write_is_byte_identical_to_feast(stack_settings: Settings, months: Months) -> None:
    """The bulk writer stores exactly the rows (entity key, ValueProto bytes, value_text, times) that
    Feast's own PostgreSQL online_write_batch stores for the same window."""
    project = f"sf_test_{uuid.uuid4().hex[:10]}"  # its own online tables: the shared ones are untouched
    store = feature_store(stack_settings, project=project)
    # Views covering every dtype: Int64, numeric and double Float64, String, Bool with nulls.
    views = ["subscription_profile", "support_90d"]
    tables = [f"{project}_{fv.name}" for fv in FEATURE_VIEWS]
    try:
        apply(stack_settings, store)
        with db.connect(db.target(stack_settings), stack_settings, autocommit=True) as conn:
            exists = (
                "SELECT count(*) FROM information_schema.tables"
                " WHERE table_schema = %s AND table_name = ANY(%s)"
            )
            assert conn.execute(exists, (FEAST_SCHEMA, tables)).fetchone()[0] == len(
                tables
            )  # apply made them
            # A table lost since apply is recreated (by Feast's own DDL) before the write.
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(FEAST_SCHEMA, tables[0])))
        users = months.users("2024-01-31")
        result = materialize(stack_settings, JAN, store)
        assert (result.rows, result.users) == (len(FEATURE_VIEWS) * users, users)
        bulk = {v: _online_rows(stack_settings, project, v) for v in views}
        assert len(bulk["subscription_profile"]) == 8 * users

        with db.connect(db.target(stack_settings), stack_settings, autocommit=True) as conn:
            for v in views:
                conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(FEAST_SCHEMA, f"{project}_{v}")))
        with contextlib.redirect_stdout(io.StringIO()):
            store.materialize(result.plan.window_start, result.plan.window_end, feature_views=views)
        for v in views:
            assert _online_rows(stack_settings, project, v) == bulk[v], v
    finally:
        store.registry.delete_project(project)
        with db.connect(db.target(stack_settings), stack_settings, autocommit=True) as conn:
            for table in tables:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(FEAST_SCHEMA, table)))
            conn.execute("DELETE FROM materializations WHERE project = %s", (project,))


def test_unknown_user_is_not_found(store: FeatureStore) -> None:
    row = online(store, "0000-NOBODY")
    assert row["found"] is False
    assert set(row["features"].values()) == {None}
    assert row["missing"] == list(row["features"])
    assert row["event_timestamp"] is None
    assert online_features(store, []) == []


def test_materialize_before_any_snapshot_says_what_exists(
    stack_settings: Settings, store: FeatureStore
) -> None:
    with pytest.raises(NoSnapshotError, match=r"2023-12-31.*2024-01-31, 2024-02-29"):
        materialize(stack_settings, date(2023, 12, 31), store)


def test_redis_online_store(stack_settings: Settings, months: Months) -> None:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    settings = stack_settings.model_copy(
        update={"online_store": "redis", "redis_url": "redis://127.0.0.1:6379/0"}
    )
    # A project of its own: Redis keys end with the project name, so nothing else is touched.
    project = f"sf_test_{uuid.uuid4().hex[:10]}"
    store = feature_store(settings, project=project)
    try:
        apply(settings, store)
        result = materialize(settings, JAN, store)
        assert (result.users, result.plan.reason) == (months.users("2024-01-31"), "first")
        row = online(store, months.user)
        want = expected(months.jan, months.user)
        assert row["features"] == {n: want[n] for n in feature_spec().names}
        assert online(store, "0000-NOBODY")["found"] is False
        assert last_materialization(settings, store).online_store == "redis://127.0.0.1:6379/0"
    finally:
        keys = list(client.scan_iter(match=b"*" + project.encode()))
        if keys:
            client.delete(*keys)
        # Not store.teardown(): Feast's teardown deletes every project of the (shared) registry.
        store.registry.delete_project(project)
        with db.connect(db.target(settings), settings, autocommit=True) as conn:
            conn.execute("DELETE FROM materializations WHERE project = %s", (project,))
    assert not list(client.scan_iter(match=b"*" + project.encode()))
