"""The online feature cache's bookkeeping: what it stores, when it refuses to serve."""

from __future__ import annotations

import time

from streamflow.serving.online_cache import OnlineCache

KEY = ("churn_v1", "u1")


def test_serves_only_while_switched_on_and_confirmed() -> None:
    cache = OnlineCache(max_entries=10, valid_for_s=0.05)
    cache.put(KEY, "v", cache.generation)
    assert cache.get(KEY) is None  # off: nothing stored, nothing served
    cache.switch_on()
    cache.put(KEY, "v", cache.generation)
    assert cache.get(KEY) == "v"
    cache.confirmed_at = time.monotonic() - 0.06  # the listener's last confirmation is too old
    assert cache.get(KEY) is None and not cache.usable
    cache.confirmed_at = time.monotonic()
    assert cache.get(KEY) == "v"
    cache.switch_off("lost")
    assert cache.get(KEY) is None and len(cache) == 0 and cache.reason == "lost"


def test_a_read_that_raced_an_invalidation_is_not_stored() -> None:
    cache = OnlineCache(max_entries=10, valid_for_s=60)
    cache.switch_on()
    started = cache.generation  # a read begins...
    cache.put(("churn_v1", "other"), "x", started)
    cache.invalidate()  # ...the online store changes while it runs...
    cache.put(KEY, "old", started)  # ...so what it read is dropped
    assert cache.get(KEY) is None and cache.get(("churn_v1", "other")) is None
    cache.put(KEY, "new", cache.generation)
    assert cache.get(KEY) == "new"


def test_holds_at_most_max_entries_dropping_the_oldest() -> None:
    cache = OnlineCache(max_entries=3, valid_for_s=60)
    cache.switch_on()
    for i in range(5):
        cache.put(("s", str(i)), i, cache.generation)
    assert len(cache) == 3 and cache.get(("s", "0")) is None and cache.get(("s", "4")) == 4
