"""The API's prediction log: every answered prediction, written to PostgreSQL off the request path.

A request only appends a tuple to an in-process bounded buffer (O(1), never awaits, never blocks).
A background task drains the buffer in batches with COPY over one async connection. When the buffer
is full, the new entry is dropped and counted rather than making the request wait; when PostgreSQL is
down, the writer keeps the unwritten batch (the buffer stays bounded: in-flight rows count against
its capacity) and retries with backoff. :meth:`PredictionLog.close`, called from the app's lifespan
shutdown after the server has finished its in-flight requests, writes whatever is left, so a graceful
shutdown loses nothing; only what cannot be written within the shutdown budget is counted as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

import psycopg

from streamflow import db
from streamflow.settings import Settings

log = logging.getLogger(__name__)

# Buffer size, batch size, flush interval and shutdown budget: Settings.prediction_log_* (each can be
# overridden per instance, as tests do).
WRITE_TIMEOUT_S = 30.0  # one COPY batch; a hung server must not hold the writer forever
RETRY_MAX_S = 10.0  # backoff ceiling while PostgreSQL is unreachable

# Column -> PostgreSQL type (schema/003). Binary COPY: ~0.7 µs of the API's CPU per row against ~4.7 µs
# for text, where datetimes are formatted in Python.
COLUMNS = {
    "logged_at": "timestamptz",
    "endpoint": "text",
    "user_id": "text",
    "model_name": "text",
    "model_version": "int4",
    "probability": "float8",
    "prediction": "int2",
    "features_as_of": "timestamptz",
}
_COPY = f"COPY prediction_log ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"

# One row of prediction_log, in COLUMNS order.
Entry = tuple[datetime, str, str, str, int, float, int, datetime | None]


class _Counter(Protocol):  # a prometheus_client Counter, or anything with inc()
    def inc(self, amount: float = 1) -> None: ...


class PredictionLog:
    def __init__(
        self,
        settings: Settings,
        *,
        buffer_size: int | None = None,
        batch_size: int | None = None,
        flush_interval_s: float | None = None,
        shutdown_timeout_s: float | None = None,
        written: _Counter | None = None,
        dropped: _Counter | None = None,
    ) -> None:
        self.settings = settings
        self.buffer_size = settings.prediction_log_buffer_size if buffer_size is None else buffer_size
        self.batch_size = settings.prediction_log_batch_size if batch_size is None else batch_size
        self.flush_interval_s = (
            settings.prediction_log_flush_interval_s if flush_interval_s is None else flush_interval_s
        )
        self.shutdown_timeout_s = (
            settings.prediction_log_shutdown_timeout_s if shutdown_timeout_s is None else shutdown_timeout_s
        )
        self.written = 0
        self.dropped = 0
        self._written_counter = written
        self._dropped_counter = dropped
        self._buffer: deque[Entry] = deque()
        self._inflight = 0  # rows taken out for the COPY in progress: still count against the bound
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._conn: psycopg.AsyncConnection | None = None
        self._conninfo: str | None = None
        self._failing = False  # log an outage once, and its end

    # ------------------------------------------------------------------ request path

    @property
    def pending(self) -> int:
        """Entries not yet written (buffered or being written)."""
        return len(self._buffer) + self._inflight

    def append(self, entry: Entry) -> None:
        """Queue one entry; never waits. A full buffer (or a closed log) drops it and counts the drop."""
        if self._closed or len(self._buffer) + self._inflight >= self.buffer_size:
            self._drop(1)
            return
        self._buffer.append(entry)
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    def extend(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.append(entry)

    def _drop(self, n: int) -> None:
        self.dropped += n
        if self._dropped_counter is not None:
            self._dropped_counter.inc(n)

    # ------------------------------------------------------------------ writer

    def start(self) -> None:
        """Start the background writer on the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="prediction-log-writer")

    async def _run(self) -> None:
        backoff = 0.0
        while not self._closed:
            await self._wait(self.flush_interval_s)
            while self._buffer and not self._closed:
                if await self._flush_batch():
                    backoff = 0.0
                    continue
                backoff = min(max(2 * backoff, 0.5), RETRY_MAX_S)
                await self._wait(backoff)
                break

    async def _wait(self, seconds: float) -> None:
        """Sleep until ``seconds`` pass or append()/close() wakes the writer."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def flush(self) -> bool:
        """Write everything buffered now; False if PostgreSQL refused (the entries stay buffered)."""
        while self._buffer:
            if not await self._flush_batch():
                return False
        return True

    async def close(self) -> None:
        """Stop the writer and write what is left within the shutdown budget; drop (and count) the rest."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout_s
        self._closed = True  # from now on append() drops, and the writer stops at its next check
        self._wake.set()
        if self._task is not None:
            # A COPY in progress may finish; one stuck past the budget is cancelled (its rows go back).
            done, _ = await asyncio.wait({self._task}, timeout=self.shutdown_timeout_s)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while self._buffer and not await self.flush():
                    await asyncio.sleep(0.2)
        if self._buffer:
            log.error("prediction log: %d entries could not be written before shutdown", len(self._buffer))
            self._drop(len(self._buffer))
            self._buffer.clear()
        await self._disconnect()

    async def _flush_batch(self) -> bool:
        batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
        self._inflight = len(batch)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                conn = await self._connection()
                async with conn.transaction(), conn.cursor() as cur, cur.copy(_COPY) as copy:
                    copy.set_types(list(COLUMNS.values()))
                    for row in batch:
                        await copy.write_row(row)
        except BaseException as exc:  # incl. cancellation: the batch goes back, in order, then re-raise
            self._buffer.extendleft(reversed(batch))
            self._inflight = 0
            self._conn, broken = None, self._conn
            if broken is not None:
                with contextlib.suppress(Exception):
                    await broken.close()
            if not isinstance(exc, Exception):
                raise
            if not self._failing:
                log.warning(
                    "prediction log: cannot write to PostgreSQL (%s: %s); keeping up to %d entries",
                    type(exc).__name__,
                    exc,
                    self.buffer_size,
                )
            self._failing = True
            return False
        self._inflight = 0
        self.written += len(batch)
        if self._written_counter is not None:
            self._written_counter.inc(len(batch))
        if self._failing:
            log.info("prediction log: writing to PostgreSQL again")
            self._failing = False
        return True

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._conninfo is None:
            # Blocking work (embedded server lookup, creating the database, migrations) off the loop.
            self._conninfo = await asyncio.to_thread(_prepare, self.settings)
        self._conn = await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=self.settings.db_connect_timeout_s,
            options=f"-c statement_timeout={int(WRITE_TIMEOUT_S * 1000)}",
        )
        return self._conn

    async def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None


def _prepare(settings: Settings) -> str:
    """Connection string of the StreamFlow database, with the prediction_log table migrated in."""
    from streamflow.migrations import migrate

    t = db.target(settings)
    with db.connect(t, settings) as conn:
        migrate(conn)  # an API started on a database older than the monitoring migration
    return t.conninfo()
