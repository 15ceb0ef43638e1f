"""The bulk writer of Feast's PostgreSQL online tables: build each changed view's table afresh, then
swap the new tables in, all in the caller's transaction.

Feast's own writer upserts one (entity, feature) row per statement: 100,000 users took ~4.5 minutes.
Upserting the same rows in bulk still spent most of its time maintaining Feast's three indexes row by
row, and rewrote every row of an update as a new MVCC version. Here, for each view whose window has
rows:

1. ``LOCK ... IN SHARE MODE`` the current table: readers go on, other writers (Feast's) wait, so the
   rows carried over below cannot change under us;
2. ``CREATE TABLE (LIKE current ...)`` without indexes, ``COPY ... FREEZE`` Feast's online rows into it
   (computed by :mod:`online_rows`), then copy over the current rows this write does not replace:
   the end state of Feast's upserts, whatever the window;
3. build each of the current table's indexes and index-backed constraints once, from their own
   definitions (``pg_get_indexdef``) under temporary names; recreate its triggers (the change
   notification of schema/004 among them), grants and storage options; ``ANALYZE``.

Then :func:`swap`, in a savepoint with a short ``lock_timeout`` (retried): lock the current tables,
drop them, rename the new tables and their indexes to the current names, check that each swapped-in
table has exactly the catalog description (columns, constraints, indexes, triggers, owner, grants,
options) of the table it replaces, and send one ``NOTIFY streamflow_online``. The exclusive locks are
held from there to the caller's commit, a few milliseconds. A statement that waited on them looks the
name up again once it has its lock and runs on a snapshot taken after the commit: it reads the new
table. Nothing is visible before the commit; a failure anywhere rolls everything back.

A REPEATABLE READ or SERIALIZABLE transaction that read nothing from the online tables before the swap
and reads them after would see the new rows, frozen (``COPY FREEZE``), not the old ones: PostgreSQL
documents table rewrites as not MVCC-safe. Feast and the API read in READ COMMITTED (autocommit).

This module and ``offline_store.py`` are the two that reach into Feast's internals
(``FeatureStore._get_provider``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from feast import FeatureStore, FeatureView, RepoConfig
from feast.infra.online_stores.helpers import compute_table_id
from feast.infra.online_stores.postgres_online_store.postgres import PostgreSQLOnlineStoreConfig
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from streamflow.features.config import ONLINE_CHANNEL, ONLINE_TRIGGER
from streamflow.features.online_rows import COPY_HEADER, COPY_TRAILER, CopyChunk, OnlineRows, OnlineTable

log = logging.getLogger(__name__)

# The swap waits at most this long for each lock (well below PostgreSQL's default deadlock_timeout of
# 1 s: a reader that holds one table and waits for another is never the one aborted), then retries.
SWAP_LOCK_TIMEOUT_MS = 200
SWAP_ATTEMPTS = 30
_SWAP_BACKOFF_S = (0.05, 1.0)
# Session memory for the index builds and the carry-over join (raised, never lowered).
_MAINTENANCE_WORK_MEM = "512MB"
_WORK_MEM = "128MB"


def bulk_supported(config: RepoConfig) -> bool:
    # A pgvector column or versioned tables are written differently: leave those to Feast.
    online = config.online_store
    return (
        isinstance(online, PostgreSQLOnlineStoreConfig)
        and not online.vector_enabled
        and not config.registry.enable_online_feature_view_versioning
    )


def online_schema(config: RepoConfig) -> str:
    return config.online_store.db_schema or config.online_store.user


def online_tables(
    conn: psycopg.Connection, store: FeatureStore, views: Sequence[FeatureView]
) -> dict[str, OnlineTable]:
    """Feast's online table of each view; tables missing (no apply since a reset) are created by Feast.
    Each gets the change-notification trigger (schema/004)."""
    config = store.config
    schema = online_schema(config)
    names = {fv.name: compute_table_id(config.project, fv) for fv in views}

    def columns() -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {n: {} for n in names.values()}
        for table, column, data_type in conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = ANY(%s)",
            (schema, list(names.values())),
        ):
            found[table][column] = data_type
        return found

    cols = columns()
    missing = [fv for fv in views if not cols[names[fv.name]]]
    if missing:
        log.info("creating Feast online tables for %s", ", ".join(fv.name for fv in missing))
        entities = [store.registry.get_entity(e, config.project) for fv in missing for e in fv.entities]
        online_store = store._get_provider().online_store  # type: ignore[attr-defined]
        online_store.update(config, [], missing, [], entities, partial=True)
        cols = columns()
    attach_notifications(conn, schema, list(names.values()))
    tables = {
        fv.name: OnlineTable(
            names[fv.name],
            "value_num" in cols[names[fv.name]],
            bool(fv.batch_source.created_timestamp_column),
        )
        for fv in views
    }
    for table in tables.values():  # the binary COPY sends each column in this type
        found = {c: cols[table.name].get(c) for c in table.column_types}
        if found != table.column_types:
            raise RuntimeError(
                f"online table {schema}.{table.name} has columns {found}, not Feast's {table.column_types}"
            )
    return tables


def _trigger_sql(schema: str, table: str) -> sql.Composed:
    return sql.SQL(
        "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {}"
        " FOR EACH STATEMENT EXECUTE FUNCTION streamflow_online_changed()"
    ).format(sql.Identifier(ONLINE_TRIGGER), sql.Identifier(schema, table))


def attach_notifications(conn: psycopg.Connection, schema: str, tables: Sequence[str]) -> None:
    """Attach the change-notification trigger (schema/004) to online tables that lack it."""
    watched = {
        row[0]
        for row in conn.execute(
            "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND t.tgname = %s",
            (schema, ONLINE_TRIGGER),
        )
    }
    for table in sorted(set(tables) - watched):
        conn.execute(_trigger_sql(schema, table))


# --------------------------------------------------------------------------- catalog


def _oid(conn: psycopg.Connection, schema: str, table: str) -> int:
    row = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (schema, table),
    ).fetchone()
    if row is None:
        raise LookupError(f"no table {schema}.{table}")
    return int(row[0])


def signature(conn: psycopg.Connection, oid: int) -> dict[str, Any]:
    """What a client can see of a table besides its rows: name, owner, options, grants, comment,
    columns, constraints, indexes, triggers (OIDs aside)."""

    def rows(query: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in conn.execute(query, {"oid": oid})]

    return {
        "relation": rows(
            "SELECT c.relname, c.relnamespace::regnamespace::text, c.relowner::regrole::text, c.relkind,"
            " c.relpersistence, c.reloptions, obj_description(c.oid, 'pg_class'),"
            " (SELECT array_agg(a ORDER BY a) FROM (SELECT format('%%s %%s %%s', grantee, privilege_type,"
            " is_grantable) AS a FROM aclexplode(c.relacl)) g) FROM pg_class c WHERE c.oid = %(oid)s"
        ),
        "columns": rows(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
            " pg_get_expr(d.adbin, d.adrelid), a.attgenerated, a.attidentity, a.attcollation,"
            " a.attstorage, a.attcompression,"
            " col_description(a.attrelid, a.attnum) FROM pg_attribute a LEFT JOIN pg_attrdef d"
            " ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
            " WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
        ),
        "constraints": rows(
            "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = %(oid)s ORDER BY conname"
        ),
        "indexes": rows(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
            " WHERE x.indrelid = %(oid)s ORDER BY i.relname"
        ),
        "triggers": rows(
            "SELECT tgname, pg_get_triggerdef(oid), tgenabled FROM pg_trigger"
            " WHERE tgrelid = %(oid)s AND NOT tgisinternal ORDER BY tgname"
        ),
    }


def _raise_setting(conn: psycopg.Connection, name: str, value: str) -> None:
    """SET LOCAL ``name`` to ``value`` unless it is already larger."""
    conn.execute(
        "SELECT set_config(%s, %s, true) WHERE pg_size_bytes(current_setting(%s)) < pg_size_bytes(%s)",
        (name, value, name, value),
    )


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class Replacement:
    """A view's new online table, built under temporary names, and what it must look like once swapped."""

    schema: str
    name: str  # the current table's name, which the new one takes
    new_name: str
    index_names: list[tuple[str, str]]  # (temporary, final)
    expected: dict[str, Any]  # signature() of the current table
    rows: int  # online rows written by this materialization (entities x features)
    carried: int  # current rows kept because this write does not replace them
    seconds: dict[str, float]  # per phase of the build


class _Phases:
    """Reports each phase as it starts and times it."""

    def __init__(self, status: Callable[[str], None]) -> None:
        self.status, self.seconds = status, {}
        self._name, self._t0 = "", time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self._name:
            self.seconds[self._name] = round(now - self._t0, 3)
        self._name, self._t0 = name, now
        if name:
            self.status(name)


def _copy_rows(
    conn: psycopg.Connection,
    table: sql.Composable,
    columns: list[str],
    chunks: Iterable[CopyChunk],
    advance: Callable[[int], None],
) -> int:
    """COPY Feast's online rows (binary) into a table created in this transaction (frozen: no hint
    bits to set later). Returns the entity rows written."""
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT binary, FREEZE)").format(table, names)
    conn.execute("SET LOCAL client_encoding = 'UTF8'")  # binary text fields are sent as UTF-8
    entities = 0
    cur = conn.cursor()
    # The queued writer sends on a thread of its own while this one takes the next chunk.
    with cur.copy(statement, writer=QueuedLibpqWriter(cur)) as copy:
        copy.write(COPY_HEADER)
        for chunk in chunks:
            copy.write(chunk.data)
            entities += chunk.entities
            advance(chunk.entities)
        copy.write(COPY_TRAILER)
    return entities


def _carry_over(
    conn: psycopg.Connection, old: sql.Composable, new: sql.Composable, columns: list[str], names: list[str]
) -> int:
    """Copy the current rows that this write does not replace into the new table: rows of features the
    view no longer has, and the rows of entities absent from the window (every written entity has a
    row for each of ``names``). Feast's upserts would leave exactly those in place."""
    if not conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(old)).fetchone()[0]:
        return 0
    cols = sql.SQL(", ").join(sql.SQL("o.{}").format(sql.Identifier(c)) for c in columns)
    foreign = conn.execute(
        sql.SQL("INSERT INTO {} SELECT {} FROM {} o WHERE o.feature_name <> ALL(%s)").format(new, cols, old),
        (names,),
    ).rowcount
    conn.execute("SET LOCAL enable_nestloop = off")  # a hash anti-join: the new table has no index yet
    absent = conn.execute(
        sql.SQL(
            "INSERT INTO {new} SELECT {cols} FROM {old} o WHERE o.feature_name = ANY(%(names)s)"
            " AND NOT EXISTS (SELECT FROM {new} n"
            " WHERE n.feature_name = %(first)s AND n.entity_key = o.entity_key)"
        ).format(new=new, old=old, cols=cols),
        {"names": names, "first": names[0]},
    ).rowcount
    conn.execute("SET LOCAL enable_nestloop = on")
    return foreign + absent


def _copy_indexes(
    conn: psycopg.Connection, schema: str, old_oid: int, new_name: str
) -> list[tuple[str, str]]:
    """Build each index and index-backed constraint of the current table on the new one, under
    temporary names. Returns [(temporary, final)] names."""
    rows = conn.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid), x.indisunique, quote_ident(i.relname),"
        " quote_ident(n.nspname) || '.' || quote_ident(t.relname), c.contype, c.condeferrable, c.condeferred"
        " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid"
        " WHERE x.indrelid = %s ORDER BY x.indisprimary DESC, i.relname",
        (old_oid,),
    ).fetchall()
    renames = []
    target = sql.Identifier(schema, new_name).as_string(conn)
    for k, (name, definition, unique, quoted, table, contype, deferrable, deferred) in enumerate(rows):
        head = f"CREATE {'UNIQUE ' if unique else ''}INDEX {quoted} ON {table} USING "
        if not definition.startswith(head):
            raise RuntimeError(f"cannot rebuild index {name!r}: unexpected definition {definition!r}")
        temp = f"{new_name}_{k}"
        conn.execute(
            f"CREATE {'UNIQUE ' if unique else ''}INDEX {temp} ON {target} USING {definition[len(head) :]}"
        )
        if contype is not None:
            if contype not in ("p", "u"):
                raise NotImplementedError(f"cannot rebuild constraint of type {contype!r} on index {name!r}")
            kind = "PRIMARY KEY" if contype == "p" else "UNIQUE"
            timing = (
                (" DEFERRABLE INITIALLY " + ("DEFERRED" if deferred else "IMMEDIATE")) if deferrable else ""
            )
            conn.execute(f"ALTER TABLE {target} ADD CONSTRAINT {temp} {kind} USING INDEX {temp}{timing}")
        renames.append((temp, name))
    return renames


def _copy_table_attributes(conn: psycopg.Connection, schema: str, old_oid: int, new_name: str) -> None:
    """Triggers, storage options, owner, grants and comment of the current table, on the new one."""
    new = sql.Identifier(schema, new_name)
    target = new.as_string(conn)
    current, options, owner, comment = conn.execute(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), array_to_string(c.reloptions, ', '),"
        " CASE WHEN c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        " THEN c.relowner::regrole::text END, obj_description(c.oid, 'pg_class')"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        (old_oid,),
    ).fetchone()
    triggers = conn.execute(
        "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal",
        (old_oid,),
    ).fetchall()
    for name, definition in triggers:
        on = f" ON {current} "
        if definition.count(on) != 1:
            raise RuntimeError(f"cannot recreate trigger {name!r}: unexpected definition {definition!r}")
        conn.execute(definition.replace(on, f" ON {target} "))
    if options:
        conn.execute(f"ALTER TABLE {target} SET ({options})")
    if owner:
        conn.execute(f"ALTER TABLE {target} OWNER TO {owner}")
    grants = conn.execute(
        "SELECT g.privilege_type, CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END,"
        " g.is_grantable FROM pg_class c, aclexplode(c.relacl) g"
        " WHERE c.oid = %s AND g.grantee <> c.relowner",
        (old_oid,),
    ).fetchall()
    for privilege, grantee, grantable in grants:  # names as PostgreSQL prints them (quoted if need be)
        option = " WITH GRANT OPTION" if grantable else ""
        conn.execute(f"GRANT {privilege} ON {target} TO {grantee}{option}")
    if comment is not None:
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(new, sql.Literal(comment)))


def build(
    conn: psycopg.Connection,
    schema: str,
    encoder: OnlineRows,
    chunks: Iterable[CopyChunk],
    advance: Callable[[int], None] = lambda n: None,
    status: Callable[[str], None] = lambda s: None,
) -> tuple[Replacement | None, int]:
    """Build the complete new online table of one view in the caller's transaction: what the current
    table would hold after Feast wrote the rows of ``chunks`` (``encoder.encode`` of its batches) into it.
    Returns (the replacement, or None when ``chunks`` hold no row and the table stays as it is; entity
    rows written)."""
    table = encoder.table
    current = sql.Identifier(schema, table.name)
    phase = _Phases(status)
    phase("locking")
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(current))
    old_oid = _oid(conn, schema, table.name)
    new_name = f"sf_swap_{old_oid}"  # unique while the current table exists; gone at rollback
    new = sql.Identifier(schema, new_name)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)").format(new, current))
    phase("writing")
    entities = _copy_rows(conn, new, table.columns, chunks, advance)
    online = entities * len(encoder.features)
    if entities == 0:
        conn.execute(sql.SQL("DROP TABLE {}").format(new))
        return None, 0
    phase("carrying over")
    columns = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute"
            " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (old_oid,),
        )
    ]
    _raise_setting(conn, "work_mem", _WORK_MEM)
    carried = _carry_over(conn, current, new, columns, encoder.names)
    phase("indexing")
    _raise_setting(conn, "maintenance_work_mem", _MAINTENANCE_WORK_MEM)
    renames = _copy_indexes(conn, schema, old_oid, new_name)
    _copy_table_attributes(conn, schema, old_oid, new_name)
    phase("analyzing")
    conn.execute(sql.SQL("ANALYZE {}").format(new))
    expected = signature(conn, old_oid)
    phase("")
    return Replacement(
        schema, table.name, new_name, renames, expected, online, carried, phase.seconds
    ), entities


# --------------------------------------------------------------------------- swap


def _swap_once(conn: psycopg.Connection, replacements: Sequence[Replacement]) -> None:
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{SWAP_LOCK_TIMEOUT_MS}ms",))
    tables = sql.SQL(", ").join(sql.Identifier(r.schema, r.name) for r in replacements)
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(tables))
    for r in replacements:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(r.schema, r.name)))
        conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                sql.Identifier(r.schema, r.new_name), sql.Identifier(r.name)
            )
        )
        for temp, final in r.index_names:
            conn.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(r.schema, temp), sql.Identifier(final)
                )
            )
        got = signature(conn, _oid(conn, r.schema, r.name))
        if got != r.expected:
            diff = {k: (r.expected[k], got[k]) for k in got if got[k] != r.expected[k]}
            raise RuntimeError(f"swapped-in {r.schema}.{r.name} differs from the table it replaces: {diff}")
    conn.execute("SELECT pg_notify(%s, %s)", (ONLINE_CHANNEL, ",".join(r.name for r in replacements)))


def swap(conn: psycopg.Connection, replacements: Sequence[Replacement]) -> int:
    """Put the new tables in place of the current ones, in the caller's transaction, and send one
    ``NOTIFY streamflow_online`` (delivered at its commit). Returns the attempts it took."""
    if not replacements:
        return 0
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with conn.transaction():  # a savepoint: a lock timeout undoes only this attempt
                _swap_once(conn, replacements)
            return attempt
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            if attempt == SWAP_ATTEMPTS:
                raise
            time.sleep(min(_SWAP_BACKOFF_S[1], _SWAP_BACKOFF_S[0] * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")
