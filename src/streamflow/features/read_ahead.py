"""Iterators run ahead of their consumer on a background thread, one after another.

Materialization reads and encodes a view's rows (an offline-store COPY and numpy work) while
PostgreSQL spends seconds on the previous view's carry-over and index builds, which need no Python:
with the next view's first batches ready, the two overlap instead of taking turns.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_S = 0.1  # how often a blocked side checks whether the other one has gone


class _End:
    pass


class ReadAhead(Generic[T]):
    """Runs ``sources`` in order on one thread, each up to ``depth`` items ahead of :meth:`items`.

    A source's exception is raised by :meth:`items` of that source. Leaving the context (normally or
    not) stops the thread and closes the source it is running.
    """

    def __init__(self, sources: Sequence[Callable[[], Iterator[T]]], depth: int) -> None:
        self._queues: list[queue.Queue[T | _End | BaseException]] = [queue.Queue(depth) for _ in sources]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sources,), name="read-ahead", daemon=True)

    def __enter__(self) -> ReadAhead[T]:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _put(self, q: queue.Queue[T | _End | BaseException], item: T | _End | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, sources: Sequence[Callable[[], Iterator[T]]]) -> None:
        for q, source in zip(self._queues, sources, strict=True):
            iterator = None
            try:
                iterator = source()
                for item in iterator:
                    if not self._put(q, item):
                        return
            except BaseException as exc:  # handed to the consumer, which raises it
                self._put(q, exc)
                return
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            if not self._put(q, _End()):
                return

    def items(self, index: int) -> Iterator[T]:
        """The items of source ``index``, as it yields them."""
        q = self._queues[index]
        while True:
            try:
                item = q.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and q.empty():
                    raise RuntimeError("the read-ahead thread stopped before this source") from None
                continue
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
