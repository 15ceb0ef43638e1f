"""Prometheus metrics of the API. Labels are routes and outcomes, never user ids.

With several worker processes (``streamflow serve --workers N``) a scrape reaches one of them, so
the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` for the workers: every metric is then kept in files there
and ``/metrics`` answers for all workers together (prometheus_client's multiprocess mode). Each
gauge says how the workers' values combine. Which mode is in force is decided once, when
prometheus_client is imported; the variable alone does not tell, because importing Feast sets it
(to a temporary folder of its own) in every process that did not have it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "streamflow_http_requests_total",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "streamflow_http_request_duration_seconds",
            "Time to answer a request",
            ["route", "method", "status"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.rejected = Counter(
            "streamflow_http_rejected_total",
            "Requests the server refused and closed while receiving them (headers_timeout,"
            " body_timeout, body_too_large, headers_too_large); those the app had begun to handle are"
            " in streamflow_http_requests_total too, with their status (408, 413)",
            ["reason"],
            registry=self.registry,
        )
        self.predictions = Counter(
            "streamflow_predictions_total",
            "Predictions served",
            ["prediction", "model_version"],
            registry=self.registry,
        )
        self.missing_features = Counter(
            "streamflow_missing_features_total",
            "Requests for users without (fresh) online features",
            ["kind"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "streamflow_model_version",
            "Model version being served (0: none)",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.model_swaps = Counter(
            "streamflow_model_swaps_total", "Hot swaps of the model", registry=self.registry
        )
        self.prediction_log_written = Counter(
            "streamflow_prediction_log_written_total",
            "Predictions written to the prediction_log table",
            registry=self.registry,
        )
        self.prediction_log_dropped = Counter(
            "streamflow_prediction_log_dropped_total",
            "Predictions not logged: buffer full (PostgreSQL slow or down) or not written by shutdown",
            registry=self.registry,
        )
        self.prediction_log_pending = Gauge(
            "streamflow_prediction_log_pending",
            "Predictions buffered, not yet written",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.cache_hits = Counter(
            "streamflow_online_cache_hits_total",
            "User feature reads answered from the in-memory copy of the online store",
            registry=self.registry,
        )
        self.cache_misses = Counter(
            "streamflow_online_cache_misses_total",
            "User feature reads that went to the online store",
            registry=self.registry,
        )
        self.cache_users = Gauge(
            "streamflow_online_cache_users",
            "Users held in the online feature cache",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.cache_on = Gauge(
            "streamflow_online_cache_on",
            "1 while the online feature cache is in use (change notifications confirmed)",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.drift_share = Gauge(
            "streamflow_drift_share",
            "Share of drifted features in the latest drift report (NaN: none yet)",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.drift_share.set(float("nan"))

    def exposition(self) -> bytes:
        """The text format of every metric: of all workers in multiprocess mode, else of this process."""
        if MULTIPROCESS:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def close(self) -> None:
        """This worker is exiting: its live gauges no longer count (its counters still do)."""
        if MULTIPROCESS:
            multiprocess.mark_process_dead(os.getpid(), path=MULTIPROCESS_DIR)


# Values kept in files, as prometheus_client decided when it was imported (the CLI sets or clears
# PROMETHEUS_MULTIPROC_DIR before); the folder is the variable's value at that time.
MULTIPROCESS = values.ValueClass is not values.MutexValue
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") if MULTIPROCESS else None


class MetricsMiddleware:
    """Pure ASGI (no per-request Request object): counts and times every HTTP request by route template.

    It also answers HEAD wherever GET is answered, as HTTP requires (FastAPI's routes do not: HEAD
    /health was a 405): the app below sees a GET, in a copy of the scope, while uvicorn still sees
    the HEAD in its own and sends the headers only. The metrics keep the method HEAD.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # (route template, method, status) -> label children; routes are templates, never raw paths.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        method = scope["method"]
        if method == "HEAD":
            scope = {**scope, "method": "GET"}

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            key = (getattr(route, "path", None) or "unmatched", method, status)
            children = self._children.get(key)
            if children is None:  # labels() costs a few µs per call; the set of keys is small
                labels = (key[0], key[1], str(status))
                children = self._children[key] = (
                    self.metrics.requests.labels(*labels),
                    self.metrics.latency.labels(*labels),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - start)
