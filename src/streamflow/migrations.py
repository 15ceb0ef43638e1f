"""Versioned SQL migrations: ``schema/NNN_name.sql`` files applied once each, in order.

Plain SQL rather than Alembic because StreamFlow has no ORM models to autogenerate from and loads
with COPY; the runner below is the whole mechanism. An advisory lock makes concurrent first runs
safe, and each file is applied in the same transaction as its bookkeeping row.
"""

from __future__ import annotations

from importlib import resources

import psycopg

_LOCK_KEY = 0x5F_57_46_4C  # any constant shared by every StreamFlow process


def migration_files() -> list[tuple[int, str, str]]:
    files = sorted(p for p in (resources.files("streamflow") / "schema").iterdir() if p.name.endswith(".sql"))
    return [(int(p.name.split("_", 1)[0]), p.name, p.read_text()) for p in files]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply pending migrations; return the names applied."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, text in migration_files():
            if version in done:
                continue
            conn.execute(text)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied.append(name)
    return applied
