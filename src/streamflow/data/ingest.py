"""Load a validated month into PostgreSQL in one transaction.

Raw tables get an upsert (a newer export wins; an older one never overwrites it), the month's
snapshot and label rows are replaced, and an ingestion_log row is written, all or nothing.
Validated files are streamed to PostgreSQL with COPY exactly as they were checked, so stored
values are the CSV's values (29.85 stays 29.85, blanks stay NULL).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
from psycopg import sql
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from streamflow import db
from streamflow.data.contracts import LABELS, PAYMENTS, SUBSCRIPTIONS, SUPPORT, USAGE, USERS, FileContract
from streamflow.data.validate import ContractError, ValidFile, Violation, validate_month
from streamflow.migrations import migrate
from streamflow.settings import Settings, get_settings

# Which snapshot table each file feeds. Raw tables share the file's name; labels have no raw table.
SNAPSHOT_OF = {
    USERS.table: "user_snapshots",
    SUBSCRIPTIONS.table: "subscription_snapshots",
    USAGE.table: "usage_snapshots",
    PAYMENTS.table: "payments_snapshots",
    SUPPORT.table: "support_snapshots",
    LABELS.table: "labels",
}
RAW_TABLES = (USERS, SUBSCRIPTIONS, USAGE, PAYMENTS, SUPPORT)
_CHUNK = 1 << 20
_LOCK_KEY = 0x5F_49_4E_47  # serialises ingestions so two months never interleave


@dataclass(frozen=True)
class IngestResult:
    month_dir: str
    as_of: date
    row_counts: dict[str, int]
    seconds: float


def _stage(conn: psycopg.Connection, contract: FileContract) -> sql.Identifier:
    stage = sql.Identifier(f"stage_{contract.table}")
    if contract is LABELS:
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} (user_id text NOT NULL, churn_label boolean NOT NULL) ON COMMIT DROP"
            ).format(stage)
        )
    else:
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(
                stage, sql.Identifier(contract.table)
            )
        )
        conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN as_of").format(stage))
    return stage


def _copy(conn: psycopg.Connection, stage: sql.Identifier, f: ValidFile, advance) -> None:
    cols = sql.SQL(", ").join(map(sql.Identifier, f.header))
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)").format(stage, cols)
    try:
        with conn.cursor().copy(statement) as copy:
            for start in range(0, len(f.data), _CHUNK):
                chunk = f.data[start : start + _CHUNK]
                copy.write(chunk)
                advance(len(chunk))
    except psycopg.errors.DataError as exc:
        # Validation should make this unreachable; if PostgreSQL still disagrees, say where.
        context = exc.diag.context or ""
        raise ContractError(
            f.contract.filename,
            [Violation(f.contract.filename, f"rejected by PostgreSQL: {exc.diag.message_primary} {context}")],
        ) from exc


def _load(conn: psycopg.Connection, f: ValidFile, as_of: date, advance) -> None:
    contract = f.contract
    stage = _stage(conn, contract)
    _copy(conn, stage, f, advance)
    cols = [c for c in contract.names]
    col_list = sql.SQL(", ").join(map(sql.Identifier, cols))
    if contract is not LABELS:
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in [*cols[1:], "as_of"]
        )
        raw = sql.Identifier(contract.table)
        conn.execute(
            sql.SQL(
                "INSERT INTO {raw} ({cols}, as_of) SELECT {cols}, %(as_of)s FROM {stage} "
                "ON CONFLICT (user_id) DO UPDATE SET {updates} WHERE {raw}.as_of <= EXCLUDED.as_of"
            ).format(raw=raw, cols=col_list, stage=stage, updates=updates),
            {"as_of": as_of},
        )
    snapshot = sql.Identifier(SNAPSHOT_OF[contract.table])
    conn.execute(sql.SQL("DELETE FROM {} WHERE as_of = %s").format(snapshot), (as_of,))
    conn.execute(
        sql.SQL("INSERT INTO {snap} ({cols}, as_of) SELECT {cols}, %(as_of)s FROM {stage}").format(
            snap=snapshot, cols=col_list, stage=stage
        ),
        {"as_of": as_of},
    )


def prepare(settings: Settings | None = None) -> db.PgTarget:
    """The StreamFlow database with its schema up to date."""
    t = db.target(settings)
    with db.connect(t, settings) as conn:
        migrate(conn)
    return t


def ingest_month(
    month_dir: Path | str, as_of: str | date, settings: Settings | None = None, show_progress: bool = False
) -> IngestResult:
    """Validate ``month_dir`` and load it as the snapshot at ``as_of``; nothing is written on error."""
    settings = settings or get_settings()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    month = validate_month(month_dir, as_of)
    target = prepare(settings)
    total = sum(len(f.data) for f in month.files.values())
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    with (
        Progress(*columns, disable=not show_progress, transient=True) as progress,
        db.connect(target, settings) as conn,
    ):
        task = progress.add_task(f"loading {month.month_dir.name} as of {month.as_of}", total=total)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            for f in month.files.values():
                _load(conn, f, month.as_of, lambda n: progress.advance(task, n))
            counts = {name: f.rows for name, f in month.files.items()}
            conn.execute(
                "INSERT INTO ingestion_log"
                " (month_dir, as_of, file_hashes, row_counts, started_at, finished_at, status)"
                " VALUES (%s, %s, %s, %s, %s, now(), 'succeeded')",
                (
                    str(month.month_dir.resolve()),
                    month.as_of,
                    json.dumps({f.contract.filename: f.sha256 for f in month.files.values()}),
                    json.dumps(counts),
                    started,
                ),
            )
    return IngestResult(str(month.month_dir), month.as_of, counts, time.perf_counter() - t0)
