"""Ingestion of the real months, on the embedded server and on an external one."""

from __future__ import annotations

import csv
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from streamflow import db
from streamflow.data.contracts import CONTRACTS
from streamflow.data.ingest import SNAPSHOT_OF, ingest_month
from streamflow.settings import Settings
from tests.conftest import MONTHS, SEEDS

RAW = [c.table for c in CONTRACTS if c.table != "labels"]
ALL_TABLES = [*RAW, *SNAPSHOT_OF.values(), "ingestion_log"]


def query(settings: Settings, statement: str, params: tuple = ()) -> list[tuple]:
    with db.connect(db.target(settings), settings) as conn:
        return conn.execute(statement, params).fetchall()


def table_digest(settings: Settings) -> dict[str, str]:
    """An order-independent digest of every table's content."""
    out = {}
    for table in ALL_TABLES:
        rows = query(
            settings, f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
        )
        out[table] = rows[0][0]
    return out


def csv_row(month: Path, file: str, user_id: str) -> dict[str, str]:
    with open(month / file, newline="") as fh:
        return next(r for r in csv.DictReader(fh) if r["user_id"] == user_id)


def test_real_months_row_counts(ingested: Settings) -> None:
    for table in RAW:
        assert query(ingested, f"SELECT count(*) FROM {table}") == [(7043,)]
    for table in SNAPSHOT_OF.values():
        counts = dict(query(ingested, f"SELECT as_of::text, count(*) FROM {table} GROUP BY as_of"))
        assert counts == {"2024-01-31": 7043, "2024-02-29": 7043}, table
    churners = dict(
        query(ingested, "SELECT as_of::text, count(*) FROM labels WHERE churn_label GROUP BY as_of")
    )
    assert churners == {"2024-01-31": 1869, "2024-02-29": 1701}


def test_stored_values_equal_csv_exactly(ingested: Settings) -> None:
    month = MONTHS["2024-01-31"]
    sub = csv_row(month, "subscriptions.csv", "7590-VHVEG")
    row = query(
        ingested,
        "SELECT months_active, monthly_fee, total_paid, plan_stream_tv, plan_stream_movies, contract_type,"
        " paperless_billing, net_service FROM subscription_snapshots WHERE user_id = %s AND as_of = %s",
        ("7590-VHVEG", "2024-01-31"),
    )[0]
    assert row == (
        int(sub["months_active"]),
        Decimal(sub["monthly_fee"]),
        Decimal(sub["total_paid"]),
        False,
        False,
        sub["contract_type"],
        True,
        sub["net_service"],
    )
    assert row[1] == Decimal("29.85")
    usage = csv_row(month, "usage_agg_30d.csv", "7590-VHVEG")
    stored = query(
        ingested,
        "SELECT watch_hours_30d, avg_session_mins_7d, unique_devices_30d, skips_7d, rebuffer_events_7d"
        " FROM usage_snapshots WHERE user_id = %s AND as_of = %s",
        ("7590-VHVEG", "2024-01-31"),
    )[0]
    assert stored == (
        float(usage["watch_hours_30d"]),
        float(usage["avg_session_mins_7d"]),
        int(usage["unique_devices_30d"]),
        int(usage["skips_7d"]),
        int(usage["rebuffer_events_7d"]),
    )
    assert stored[0] == 24.483650766787413


def test_blank_streaming_plans_stay_null(ingested: Settings) -> None:
    rows = query(
        ingested,
        "SELECT count(*) FILTER (WHERE plan_stream_tv IS NULL), count(*) FILTER (WHERE plan_stream_movies IS NULL),"
        " count(*) FILTER (WHERE net_service = 'No'),"
        " count(*) FILTER (WHERE (plan_stream_tv IS NULL) <> (net_service = 'No'))"
        " FROM subscription_snapshots WHERE as_of = '2024-01-31'",
    )
    assert rows == [(1526, 1526, 1526, 0)]


def test_raw_tables_hold_the_latest_export(ingested: Settings) -> None:
    assert query(ingested, "SELECT DISTINCT as_of::text FROM usage_agg_30d") == [("2024-02-29",)]
    month = MONTHS["2024-02-29"]
    usage = csv_row(month, "usage_agg_30d.csv", "7590-VHVEG")
    assert query(ingested, "SELECT watch_hours_30d FROM usage_agg_30d WHERE user_id = '7590-VHVEG'") == [
        (float(usage["watch_hours_30d"]),)
    ]


def test_ingestion_log_records_hashes_and_counts(ingested: Settings) -> None:
    rows = query(
        ingested, "SELECT as_of::text, status, file_hashes, row_counts FROM ingestion_log ORDER BY id"
    )
    assert [(r[0], r[1]) for r in rows] == [("2024-01-31", "succeeded"), ("2024-02-29", "succeeded")]
    sums = dict(
        line.split()[::-1] for line in (SEEDS / "SHA256SUMS").read_text().splitlines() if line.strip()
    )
    assert rows[0][2]["labels.csv"] == sums["month_000/labels.csv"]
    assert rows[0][3] == {c.table: 7043 for c in CONTRACTS}


def test_same_month_twice_is_idempotent(fresh_settings: Settings) -> None:
    ingest_month(MONTHS["2024-01-31"], "2024-01-31", fresh_settings)
    before = table_digest(fresh_settings)
    ingest_month(MONTHS["2024-01-31"], "2024-01-31", fresh_settings)
    after = table_digest(fresh_settings)
    assert {k: v for k, v in after.items() if k != "ingestion_log"} == {
        k: v for k, v in before.items() if k != "ingestion_log"
    }
    assert query(fresh_settings, "SELECT count(*) FROM ingestion_log") == [(2,)]


def test_corrected_month_replaces_its_snapshot_only(fresh_settings: Settings, tmp_path: Path) -> None:
    ingest_month(MONTHS["2024-01-31"], "2024-01-31", fresh_settings)
    ingest_month(MONTHS["2024-02-29"], "2024-02-29", fresh_settings)
    corrected = tmp_path / "month_001"
    shutil.copytree(MONTHS["2024-02-29"], corrected)
    labels = (corrected / "labels.csv").read_text().splitlines()
    head, first = labels[0], labels[1]
    assert first.startswith("7590-VHVEG,")
    flipped = "7590-VHVEG," + ("False" if first.endswith("True") else "True")
    kept = [line for line in labels[1:] if not line.startswith("5575-GNVDE,")]  # a user dropped from the fix
    (corrected / "labels.csv").write_text("\n".join([head, flipped, *kept[1:]]) + "\n")

    ingest_month(corrected, "2024-02-29", fresh_settings)

    per_month = dict(query(fresh_settings, "SELECT as_of::text, count(*) FROM labels GROUP BY as_of"))
    assert per_month == {"2024-01-31": 7043, "2024-02-29": 7042}
    new = query(
        fresh_settings, "SELECT churn_label FROM labels WHERE user_id='7590-VHVEG' AND as_of='2024-02-29'"
    )
    old = query(
        fresh_settings, "SELECT churn_label FROM labels WHERE user_id='7590-VHVEG' AND as_of='2024-01-31'"
    )
    assert new == [(flipped.endswith("True"),)]
    assert old == [(csv_row(MONTHS["2024-01-31"], "labels.csv", "7590-VHVEG")["churn_label"] == "True",)]


def test_older_month_never_overwrites_newer_raw_rows(fresh_settings: Settings) -> None:
    ingest_month(MONTHS["2024-02-29"], "2024-02-29", fresh_settings)
    ingest_month(MONTHS["2024-01-31"], "2024-01-31", fresh_settings)
    assert query(fresh_settings, "SELECT DISTINCT as_of::text FROM usage_agg_30d") == [("2024-02-29",)]
    assert dict(query(fresh_settings, "SELECT as_of::text, count(*) FROM usage_snapshots GROUP BY 1")) == {
        "2024-01-31": 7043,
        "2024-02-29": 7043,
    }


@pytest.mark.parametrize("bad_as_of", ["2024-02-30", "yesterday", "2024/01/31"])
def test_bad_as_of_is_rejected(ingested: Settings, bad_as_of: str) -> None:
    from streamflow.data.validate import ContractError

    with pytest.raises(ContractError, match=r"not a date YYYY-MM-DD"):
        ingest_month(MONTHS["2024-01-31"], bad_as_of, ingested)
