"""ReadAhead hands each source's items to its consumer in order, raises its errors, and stops cleanly."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from streamflow.features.read_ahead import ReadAhead


def test_sources_run_in_order_ahead_of_their_consumer() -> None:
    produced: list[int] = []
    second_started = threading.Event()

    def first() -> Iterator[int]:
        for i in range(3):
            produced.append(i)
            yield i

    def second() -> Iterator[int]:
        second_started.set()
        yield from (10, 11)

    with ReadAhead([first, second], depth=4) as ahead:
        assert list(ahead.items(0)) == [0, 1, 2]
        assert second_started.wait(timeout=10)  # read before its consumer asks for it
        assert list(ahead.items(1)) == [10, 11]


def test_a_source_error_is_raised_by_its_consumer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("broken source")

    with ReadAhead([failing], depth=1) as ahead:
        items = ahead.items(0)
        assert next(items) == 1
        with pytest.raises(ValueError, match="broken source"):
            next(items)


def test_leaving_early_closes_the_running_source() -> None:
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    with ReadAhead([endless, endless], depth=2) as ahead:
        assert next(ahead.items(0)) == 0
    assert closed.is_set()  # the thread has been joined: its source is closed
