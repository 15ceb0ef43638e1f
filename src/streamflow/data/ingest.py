"""Load a month into PostgreSQL as a new revision of its snapshot, in one transaction.

Validation streams: each file is read block by block, checked, and the checked block is COPYed at
once into a fresh, unindexed revision table (data/revisions.py), so PostgreSQL parses one block
while the next is validated. What is loaded is exactly what was validated (the reader's normalised
CSV: values as written, 29.85 stays 29.85, blanks NULL). Only when every file and the cross-file
rules pass are the tables keyed and attached as the month's partitions; any violation rolls the
whole transaction back. The same files again are a no-op; different files for a month already
loaded become its next revision, and the previous one stays readable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from streamflow import db
from streamflow.data import revisions
from streamflow.data.validate import (
    ContractError,
    FileReader,
    MonthReader,
    Violation,
    open_month,
    parse_as_of,
)
from streamflow.migrations import migrate
from streamflow.progress import row_progress
from streamflow.settings import Settings, get_settings

_LOCK_KEY = 0x5F_49_4E_47  # serialises ingestions so two months never interleave


@dataclass(frozen=True)
class IngestResult:
    month_dir: str
    as_of: date
    revision: int
    status: Literal["succeeded", "unchanged"]  # unchanged: these files are already that revision
    row_counts: dict[str, int]
    seconds: float
    warnings: tuple[str, ...] = ()


def prepare(settings: Settings | None = None) -> db.PgTarget:
    """The StreamFlow database with its schema up to date."""
    t = db.target(settings)
    with db.connect(t, settings) as conn:
        migrate(conn)
    return t


def _copy(
    conn: psycopg.Connection, table: sql.Composed, f: FileReader, advance: Callable[[bytes], None]
) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
        table, sql.SQL(", ").join(map(sql.Identifier, f.contract.names))
    )
    # The queued writer sends from a thread: the next block is validated while this one is sent.
    cursor = conn.cursor()
    try:
        with cursor.copy(statement, writer=QueuedLibpqWriter(cursor)) as copy:
            for chunk in f.chunks():
                copy.write(chunk)
                advance(chunk)
    except psycopg.errors.DataError as exc:
        # Validation should make this unreachable; if PostgreSQL still disagrees, say where.
        where = f" ({exc.diag.context.strip()})" if exc.diag.context else ""
        raise ContractError(
            f.path.parent,
            [Violation(f.contract.filename, f"rejected by PostgreSQL: {exc.diag.message_primary}{where}")],
        ) from exc


def _log(
    conn: psycopg.Connection,
    month_dir: Path,
    as_of: date,
    hashes: dict[str, str],
    counts: dict[str, int],
    started: datetime,
    status: str,
    revision: int | None = None,
    error: str | None = None,
) -> int:
    row = conn.execute(
        "INSERT INTO ingestion_log (month_dir, as_of, file_hashes, row_counts, started_at, finished_at,"
        " status, revision, error) VALUES (%s, %s, %s, %s, %s, now(), %s, %s, %s) RETURNING id",
        (
            str(month_dir.resolve()),
            as_of,
            json.dumps(hashes),
            json.dumps(counts),
            started,
            status,
            revision,
            error,
        ),
    ).fetchone()
    return int(row[0])


def _load(
    conn: psycopg.Connection, month: MonthReader, force: bool, started: datetime, show_progress: bool
) -> IngestResult | tuple[int, dict[str, int]]:
    """Inside the caller's transaction: (revision, row counts) loaded, or the no-op result."""
    hashes = {f.contract.filename: f.sha256 for f in month.files}
    current = revisions.current_revision(conn, month.as_of)
    if current is not None and current.file_hashes == hashes:
        _log(
            conn,
            month.month_dir,
            month.as_of,
            hashes,
            current.row_counts,
            started,
            "unchanged",
            current.revision,
        )
        return IngestResult(
            str(month.month_dir),
            month.as_of,
            current.revision,
            "unchanged",
            current.row_counts,
            0.0,
            tuple(month.warnings),
        )
    elsewhere = [d for d in revisions.same_content(conn, hashes) if d != month.as_of]
    if elsewhere and not force:
        shown = ", ".join(d.isoformat() for d in elsewhere)
        rule = (
            f"these six files were already ingested as of {shown}; a new month with identical files is"
            f" almost always the wrong folder (pass --force to ingest them as of {month.as_of} as well)"
        )
        raise ContractError(month.month_dir, [Violation(month.month_dir.name, rule)])
    revision = revisions.next_revision(conn, month.as_of)
    total = sum(f.size for f in month.files)
    with row_progress(show_progress) as bar:
        task = bar.add_task(f"ingest {month.month_dir.name} as of {month.as_of}", total=total, rows=0)
        done = 0

        def advance(chunk: bytes) -> None:
            nonlocal done
            done += chunk.count(b"\n")
            bar.update(task, advance=len(chunk), rows=done)

        for f in month.files:
            if month.failed:
                break  # finish() reads the rest for its report, without sending it
            table = revisions.create_table(
                conn, revisions.SNAPSHOT_TABLES[f.contract.table], month.as_of, revision
            )
            _copy(conn, table, f, advance)
        month.finish()  # raises on any violation: the transaction rolls back, nothing is written
    previous = current.revision if current else None
    for f in month.files:
        revisions.attach(conn, revisions.SNAPSHOT_TABLES[f.contract.table], month.as_of, revision, previous)
    counts = {f.contract.table: f.rows for f in month.files}
    log_id = _log(conn, month.month_dir, month.as_of, hashes, counts, started, "succeeded", revision)
    conn.execute(
        "UPDATE snapshot_revisions SET superseded_at = now() WHERE as_of = %s AND superseded_at IS NULL",
        (month.as_of,),
    )
    conn.execute(
        "INSERT INTO snapshot_revisions (as_of, revision, ingestion_id, file_hashes, row_counts, created_at)"
        " VALUES (%s, %s, %s, %s, %s, now())",
        (month.as_of, revision, log_id, json.dumps(hashes), json.dumps(counts)),
    )
    return revision, counts


def ingest_month(
    month_dir: Path | str,
    as_of: str | date,
    settings: Settings | None = None,
    show_progress: bool = False,
    *,
    allow_incomplete: bool = False,
    force: bool = False,
) -> IngestResult:
    """Validate ``month_dir`` and load it as the snapshot at ``as_of``; nothing is written on error.

    ``allow_incomplete``: accept users missing from some files; ``force``: accept files identical to
    another month's. A refused month is recorded in ``ingestion_log`` (status failed) all the same.
    """
    settings = settings or get_settings()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    month_dir = Path(month_dir)
    try:
        month = open_month(month_dir, as_of, allow_incomplete=allow_incomplete)
    except ContractError as exc:
        _log_failure(settings, month_dir, as_of, started, exc)
        raise
    target = prepare(settings)
    try:
        with month, db.connect(target, settings) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            # Each key is built in memory rather than in sort files (a million ids take ~60 MB).
            conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
            loaded = _load(conn, month, force, started, show_progress)
    except ContractError as exc:
        _log_failure(settings, month_dir, month.as_of, started, exc)
        raise
    if isinstance(loaded, IngestResult):
        return loaded
    revision, counts = loaded
    return IngestResult(
        str(month.month_dir),
        month.as_of,
        revision,
        "succeeded",
        counts,
        time.perf_counter() - t0,
        tuple(month.warnings),
    )


def _log_failure(
    settings: Settings, month_dir: Path, as_of: str | date, started: datetime, exc: ContractError
) -> None:
    """Record a refused month in its own transaction (the load's was rolled back): only a month that
    was attempted (its folder exists, its date is valid), and only if the database answers."""
    try:
        day = parse_as_of(as_of)
    except ContractError:
        return
    if not month_dir.is_dir():
        return
    try:
        with db.connect(prepare(settings), settings) as conn, conn.transaction():
            _log(conn, month_dir, day, {}, {}, started, "failed", error=str(exc))
    except db.DatabaseUnavailable:
        pass  # the refusal itself is what the user needs to see
