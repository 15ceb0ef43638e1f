"""Ingestion into snapshot revisions, on the embedded server and on an external one, for generated
months and (when present) the real exports."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from streamflow import db
from streamflow.data.contracts import CONTRACTS, FileContract, Kind
from streamflow.data.ingest import ingest_month
from streamflow.data.revisions import SNAPSHOT_TABLES
from streamflow.data.validate import ContractError
from streamflow.settings import Settings
from tests.conftest import Months

VIEWS = [c.table for c in CONTRACTS if c.table != "labels"]  # the latest export of every user
DIGESTED = [*SNAPSHOT_TABLES.values(), "snapshot_revisions"]


def query(settings: Settings, statement: str, params: tuple = ()) -> list[tuple]:
    with db.connect(db.target(settings), settings) as conn:
        return conn.execute(statement, params).fetchall()


def table_digest(settings: Settings) -> dict[str, str]:
    """An order-independent digest of every snapshot table, the revisions and the revision tables."""
    out = {
        table: query(
            settings,
            f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t",
        )[0][0]
        for table in DIGESTED
    }
    out["revision tables"] = str(
        query(
            settings,
            "SELECT array_agg(tablename ORDER BY tablename) FROM pg_tables WHERE schemaname = 'revisions'",
        )
    )
    return out


def _value(kind: Kind, text: str) -> Any:
    if text == "":
        return None
    return {
        Kind.INT: int,
        Kind.DECIMAL: Decimal,
        Kind.FLOAT: float,
        Kind.BOOL: lambda v: v == "True",
        Kind.DATE: date.fromisoformat,
    }.get(kind, str)(text)


def csv_rows(folder: Path, contract: FileContract) -> list[tuple]:
    """The file's rows typed as PostgreSQL returns them, in the contract's column order, by user_id."""
    with open(folder / contract.filename, newline="") as fh:
        rows = [tuple(_value(c.kind, r[c.name]) for c in contract.columns) for r in csv.DictReader(fh)]
    return sorted(rows)


def stored_rows(
    settings: Settings, contract: FileContract, as_of: str, table: str | None = None
) -> list[tuple]:
    columns = ", ".join(contract.names)
    relation = table or SNAPSHOT_TABLES[contract.table]
    return query(settings, f"SELECT {columns} FROM {relation} WHERE as_of = %s ORDER BY user_id", (as_of,))


def test_every_value_is_stored_exactly_as_exported(fresh_settings: Settings, months: Months) -> None:
    for as_of, folder in months.folders.items():
        result = ingest_month(folder, as_of, fresh_settings)
        assert (result.status, result.revision) == ("succeeded", 1)
    for as_of, folder in months.folders.items():
        for contract in CONTRACTS:
            assert stored_rows(fresh_settings, contract, as_of) == csv_rows(folder, contract), (
                as_of,
                contract,
            )
    if months.source == "real":
        fee = query(
            fresh_settings, "SELECT monthly_fee FROM subscription_snapshots WHERE user_id = '7590-VHVEG'"
        )
        assert fee == [(Decimal("29.85"),), (Decimal("29.85"),)]
    nulls = query(
        fresh_settings,
        "SELECT count(*) FILTER (WHERE (plan_stream_tv IS NULL) <> (net_service = 'No')),"
        " count(*) FILTER (WHERE plan_stream_tv IS NULL) FROM subscription_snapshots",
    )[0]
    assert nulls[0] == 0 and nulls[1] > 0  # blank exactly for users without internet, and stored as NULL


def test_the_latest_export_views_follow_the_newest_month(fresh_settings: Settings, months: Months) -> None:
    # Loaded newest first: an older month never hides a newer one.
    ingest_month(months.feb, "2024-02-29", fresh_settings)
    ingest_month(months.jan, "2024-01-31", fresh_settings)
    jan_only = {r[0] for r in csv_rows(months.jan, CONTRACTS[0])} - {
        r[0] for r in csv_rows(months.feb, CONTRACTS[0])
    }
    for view in VIEWS:
        as_ofs = dict(query(fresh_settings, f"SELECT as_of::text, count(*) FROM {view} GROUP BY 1"))
        feb_users = len(csv_rows(months.feb, CONTRACTS[0]))
        assert as_ofs == {"2024-02-29": feb_users, **({"2024-01-31": len(jan_only)} if jan_only else {})}, (
            view
        )
    usage = next(c for c in CONTRACTS if c.table == "usage_agg_30d")
    latest = dict((r[0], r[1]) for r in csv_rows(months.feb, usage))
    stored = dict(query(fresh_settings, "SELECT user_id, watch_hours_30d FROM usage_agg_30d"))
    assert {u: stored[u] for u in latest} == latest


def test_ingestion_log_and_revisions_record_hashes_and_counts(
    fresh_settings: Settings, months: Months
) -> None:
    ingest_month(months.jan, "2024-01-31", fresh_settings)
    hashes = {
        c.filename: hashlib.sha256((months.jan / c.filename).read_bytes()).hexdigest() for c in CONTRACTS
    }
    counts = {c.table: len(csv_rows(months.jan, c)) for c in CONTRACTS}
    log = query(
        fresh_settings, "SELECT as_of::text, status, revision, file_hashes, row_counts FROM ingestion_log"
    )
    assert log == [("2024-01-31", "succeeded", 1, hashes, counts)]
    revisions = query(
        fresh_settings,
        "SELECT as_of::text, revision, file_hashes, superseded_at IS NULL FROM snapshot_revisions",
    )
    assert revisions == [("2024-01-31", 1, hashes, True)]


def test_same_month_twice_is_a_logged_no_op(fresh_settings: Settings, months: Months) -> None:
    ingest_month(months.jan, "2024-01-31", fresh_settings)
    before = table_digest(fresh_settings)
    again = ingest_month(months.jan, "2024-01-31", fresh_settings)
    assert (again.status, again.revision) == ("unchanged", 1)
    assert table_digest(fresh_settings) == before
    assert query(fresh_settings, "SELECT status, revision FROM ingestion_log ORDER BY id") == [
        ("succeeded", 1),
        ("unchanged", 1),
    ]


def _corrected(months: Months, tmp_path: Path) -> tuple[Path, str, Decimal]:
    """February with one user's monthly fee changed: (folder, user, new fee)."""
    folder = tmp_path / "corrected"
    shutil.copytree(months.feb, folder)
    lines = (folder / "subscriptions.csv").read_text().splitlines()
    header = lines[0].split(",")
    fields = lines[1].split(",")
    fee = header.index("monthly_fee")
    new_fee = Decimal(fields[fee]) + Decimal("1.10")
    fields[fee] = str(new_fee)
    lines[1] = ",".join(fields)
    (folder / "subscriptions.csv").write_text("\n".join(lines) + "\n")
    return folder, fields[0], new_fee


def test_a_corrected_month_becomes_a_new_revision_and_keeps_the_old_readable(
    fresh_settings: Settings, months: Months, tmp_path: Path
) -> None:
    ingest_month(months.jan, "2024-01-31", fresh_settings)
    ingest_month(months.feb, "2024-02-29", fresh_settings)
    january = {c.table: stored_rows(fresh_settings, c, "2024-01-31") for c in CONTRACTS}
    corrected, user, fee = _corrected(months, tmp_path)
    old_fee = query(
        fresh_settings,
        "SELECT monthly_fee FROM subscription_snapshots WHERE user_id = %s AND as_of = '2024-02-29'",
        (user,),
    )

    result = ingest_month(corrected, "2024-02-29", fresh_settings)

    assert (result.status, result.revision) == ("succeeded", 2)
    served = query(
        fresh_settings,
        "SELECT monthly_fee, revision FROM subscription_snapshots WHERE user_id = %s AND as_of = '2024-02-29'",
        (user,),
    )
    assert served == [(fee, 2)]
    earlier = query(
        fresh_settings,
        "SELECT monthly_fee FROM revisions.subscription_snapshots_2024_02_29_r1 WHERE user_id = %s",
        (user,),
    )
    assert earlier == old_fee
    for contract in CONTRACTS:  # revision 1 is whole, and January is untouched
        assert stored_rows(
            fresh_settings,
            contract,
            "2024-02-29",
            f"revisions.{SNAPSHOT_TABLES[contract.table]}_2024_02_29_r1",
        ) == csv_rows(months.feb, contract)
        assert stored_rows(fresh_settings, contract, "2024-01-31") == january[contract.table]
    history = query(
        fresh_settings,
        "SELECT as_of::text, revision, superseded_at IS NULL FROM snapshot_revisions ORDER BY as_of, revision",
    )
    assert history == [("2024-01-31", 1, True), ("2024-02-29", 1, False), ("2024-02-29", 2, True)]
    # Each month serves one revision: one partition per month.
    partitions = query(
        fresh_settings,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'subscription_snapshots'::regclass ORDER BY 1",
    )
    assert partitions == [
        ("subscription_snapshots_2024_01_31_r1",),
        ("subscription_snapshots_2024_02_29_r2",),
    ]


def test_identical_files_under_another_date_are_refused_unless_forced(
    fresh_settings: Settings, months: Months
) -> None:
    ingest_month(months.jan, "2024-01-31", fresh_settings)
    before = table_digest(fresh_settings)
    with pytest.raises(ContractError, match=r"already ingested as of 2024-01-31.*--force"):
        ingest_month(months.jan, "2024-03-31", fresh_settings)
    assert table_digest(fresh_settings) == before
    forced = ingest_month(months.jan, "2024-03-31", fresh_settings, force=True)
    assert (forced.status, forced.revision) == ("succeeded", 1)
    assert query(fresh_settings, "SELECT count(DISTINCT as_of) FROM labels") == [(2,)]


def test_a_month_that_fails_late_writes_nothing(
    fresh_settings: Settings, months: Months, tmp_path: Path
) -> None:
    """The last file breaks the contract: the files before it were already sent to PostgreSQL, and all
    of it is rolled back; the refusal is logged on its own."""
    ingest_month(months.jan, "2024-01-31", fresh_settings)
    ingest_month(months.feb, "2024-02-29", fresh_settings)
    before = table_digest(fresh_settings)
    broken, _, _ = _corrected(months, tmp_path)
    labels = (broken / "labels.csv").read_text().splitlines()
    labels[-1] = labels[-1].rsplit(",", 1)[0] + ",maybe"
    (broken / "labels.csv").write_text("\n".join(labels) + "\n")

    with pytest.raises(ContractError, match=r"labels\.csv: column 'churn_label': must be True or False"):
        ingest_month(broken, "2024-02-29", fresh_settings)

    assert table_digest(fresh_settings) == before
    log = query(fresh_settings, "SELECT status, revision, error FROM ingestion_log ORDER BY id")
    assert [r[:2] for r in log] == [("succeeded", 1), ("succeeded", 1), ("failed", None)]
    assert "must be True or False" in log[-1][2]


def test_migration_moves_an_existing_database_into_revisions(
    fresh_settings: Settings, months: Months
) -> None:
    """A database at schema 004 (tables, not partitions) keeps every row as revision 1 of its month."""
    from streamflow.migrations import migrate, migration_files

    t = db.target(fresh_settings)
    with db.connect(t, fresh_settings) as conn:
        with conn.transaction():
            conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, name, text in migration_files():
                if version <= 4:
                    conn.execute(text)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                    )
            for contract in CONTRACTS:  # what the old ingestion wrote: snapshots (and raw tables) per month
                snapshot = SNAPSHOT_TABLES[contract.table]
                with conn.cursor().copy(
                    f"COPY {snapshot} ({', '.join(contract.names)}, as_of) FROM STDIN"
                ) as copy:
                    for row in csv_rows(months.jan, contract):
                        copy.write_row((*row, date(2024, 1, 31)))
            conn.execute(
                "INSERT INTO ingestion_log (month_dir, as_of, file_hashes, row_counts, started_at, finished_at,"
                " status) VALUES ('m', '2024-01-31', '{\"users.csv\": \"x\"}', '{}', now(), now(), 'succeeded')"
            )
        assert [name for name in migrate(conn) if name.startswith("005")]
    for contract in CONTRACTS:
        assert stored_rows(fresh_settings, contract, "2024-01-31") == csv_rows(months.jan, contract)
    assert query(fresh_settings, "SELECT DISTINCT revision FROM labels") == [(1,)]
    assert query(fresh_settings, "SELECT as_of::text, revision, file_hashes FROM snapshot_revisions") == [
        ("2024-01-31", 1, {"users.csv": "x"})
    ]
    # The next ingestion of that month (different files) becomes revision 2.
    assert ingest_month(months.jan, "2024-01-31", fresh_settings).revision == 2


def test_schema_columns_follow_the_export_contract(fresh_settings: Settings) -> None:
    """The SQL tables and the contract state the same columns, order and types (one fact, checked)."""
    from streamflow.data.ingest import prepare

    prepare(fresh_settings)
    sql_type = {
        Kind.ID: "text",
        Kind.CATEGORY: "text",
        Kind.INT: "integer",
        Kind.DECIMAL: "numeric",
        Kind.FLOAT: "double precision",
        Kind.BOOL: "boolean",
        Kind.DATE: "date",
    }
    for contract in CONTRACTS:
        columns = query(
            fresh_settings,
            "SELECT column_name, data_type, is_nullable = 'YES' FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
            (SNAPSHOT_TABLES[contract.table],),
        )
        keys = [
            ("user_id", "text", False),
            ("as_of", "date", False),
            ("as_of_ts", "timestamp with time zone", False),
            ("revision", "integer", False),
        ]
        assert columns[:4] == keys
        assert columns[4:] == [(c.name, sql_type[c.kind], c.nullable) for c in contract.columns[1:]], (
            contract.table
        )


def test_the_cli_reports_revisions_refuses_a_duplicate_and_forces_it(
    settings_factory: Callable[[str], Settings], generated_months: Months, tmp_path: Path
) -> None:
    from tests.cli_support import cli_env, run

    env = cli_env(settings_factory("embedded"))
    jan = str(generated_months.jan)
    first = json.loads(run(env, "ingest", jan, "--as-of", "2024-01-31", "--json", cwd=tmp_path).stdout)
    assert (first["status"], first["revision"], first["warnings"]) == ("succeeded", 1, [])
    again = run(env, "ingest", jan, "--as-of", "2024-01-31", cwd=tmp_path)
    assert again.code == 0 and "already revision 1 of 2024-01-31: nothing to do" in again.stdout, again
    refused = run(env, "ingest", jan, "--as-of", "2024-03-31", cwd=tmp_path)
    assert refused.code != 0 and "already ingested as of 2024-01-31" in refused.stderr, refused
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    forced = run(env, "ingest", jan, "--as-of", "2024-03-31", "--force", "--json", cwd=tmp_path)
    assert json.loads(forced.stdout)["status"] == "succeeded", forced
