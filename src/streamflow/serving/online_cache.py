"""An in-memory copy of online features that is never knowingly older than the online store.

Every write to a PostgreSQL online table sends ``NOTIFY streamflow_online`` when it commits (a
statement trigger, ``schema/004``, attached by ``features.online_writer``). A listener connection drops the
whole copy on each notification. The copy is used only while that channel is known to work:

* it starts empty and is switched on only after ``LISTEN`` succeeded and every online table was
  checked to carry the trigger (a table without it could change silently);
* the listener pings the server every ``HEARTBEAT_S``; entries are served only while the last
  confirmation is younger than ``online_timeout_s + HEARTBEAT_S``, so a silent network partition
  switches the copy off by itself, and a lost connection switches it off at once;
* a read that started before an invalidation does not store what it read (generation check).

What remains is the delivery time of the notification itself: a request that reaches this process
between the writer's COMMIT and the notification's arrival can still get the previous values, as
it could from a read of PostgreSQL that started just before the commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import psycopg

from streamflow.features.config import FEAST_SCHEMA, ONLINE_CHANNEL, ONLINE_TRIGGER
from streamflow.serving.outages import one_line

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
RETRY_S = 1.0


class OnlineCache:
    """``(feature service, user id) -> value`` while switched on; values must not be mutated by callers."""

    def __init__(self, max_entries: int, valid_for_s: float) -> None:
        self.max_entries = max_entries
        self.valid_for_s = valid_for_s
        self.generation = 0
        self.confirmed_at = -float("inf")  # monotonic time of the last proof that the channel works
        self.enabled = False
        self.reason = "not started"  # why it is off, for /ready and logs
        self._entries: dict[tuple[str, str], object] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def usable(self) -> bool:
        return self.enabled and time.monotonic() - self.confirmed_at < self.valid_for_s

    def get(self, key: tuple[str, str]) -> object | None:
        return self._entries.get(key) if self.usable else None

    def put(self, key: tuple[str, str], value: object, generation: int) -> None:
        """Store what a read started at ``generation`` returned, unless the store changed since."""
        if generation != self.generation or not self.usable:
            return
        if len(self._entries) >= self.max_entries:  # evict the oldest insertion (dicts keep order)
            del self._entries[next(iter(self._entries))]
        self._entries[key] = value

    def invalidate(self) -> None:
        self.generation += 1
        self._entries.clear()

    def switch_on(self) -> None:
        self.invalidate()
        self.confirmed_at = time.monotonic()
        self.enabled = True
        self.reason = ""

    def switch_off(self, reason: str) -> None:
        self.enabled = False
        self.reason = reason
        self.invalidate()


async def listen(
    cache: OnlineCache,
    conninfo: str,
    tables: list[str],
    timeout_s: float,
    on_invalidate: Callable[[], None] = lambda: None,
    on_answer: Callable[[], object] = lambda: None,
    on_failure: Callable[[str], object] = lambda reason: None,
) -> None:
    """Keep ``cache`` coherent with the online tables ``tables`` (in FEAST_SCHEMA) until cancelled.

    ``on_answer``/``on_failure`` hear, every second, whether the server answers (the reader's
    record of the online store's state, which logs its changes); the cache's own changes are
    logged at INFO only.
    """
    unwatched_before: list[str] = []
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                conninfo,
                autocommit=True,
                connect_timeout=max(1, int(timeout_s)),
                options=f"-c statement_timeout={int(timeout_s * 1000)}",
            ) as conn:
                async with asyncio.timeout(timeout_s):
                    await conn.execute(f"LISTEN {ONLINE_CHANNEL}")
                    cur = await conn.execute(
                        "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                        " JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname = %s AND t.tgname = %s",
                        (FEAST_SCHEMA, ONLINE_TRIGGER),
                    )
                    unwatched = sorted(set(tables) - {r[0] for r in await cur.fetchall()})
                    cur = await conn.execute(
                        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname = %s AND c.relname = ANY(%s)",
                        (FEAST_SCHEMA, unwatched),
                    )
                    absent = len(unwatched) - (await cur.fetchone())[0]
                on_answer()
                if unwatched:
                    # Run `streamflow features apply` (or materialize) to create the tables and triggers.
                    cache.switch_off(
                        "feature store not applied: run `streamflow features apply`"
                        if absent
                        else f"online tables without change notifications: {', '.join(unwatched)}"
                    )
                    if unwatched != unwatched_before:  # once per change, not every retry
                        log.warning("online feature cache off: %s", cache.reason)
                        unwatched_before = unwatched
                    await asyncio.sleep(RETRY_S * 10)
                    continue
                unwatched_before = []
                cache.switch_on()
                log.info("online feature cache on")
                while True:
                    async for _ in conn.notifies(timeout=HEARTBEAT_S):
                        cache.invalidate()
                        on_invalidate()
                    async with asyncio.timeout(timeout_s):
                        await conn.execute("SELECT 1")
                    cache.confirmed_at = time.monotonic()
                    on_answer()
        except asyncio.CancelledError:
            cache.switch_off("stopped")
            raise
        except Exception as exc:  # server down, network gone, timeout: off until we listen again
            reason = f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else one_line(exc)
            if cache.enabled:
                log.info("online feature cache off: change notifications lost (%s)", reason)
            cache.switch_off(f"change notifications lost: {type(exc).__name__}")
            on_failure(reason)
            await asyncio.sleep(RETRY_S)
