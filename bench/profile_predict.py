"""Where one POST /predict spends its time, step by step, in process (no HTTP, no concurrency).

Run by bench_serve.py (settings from STREAMFLOW_* variables):
    python bench/profile_predict.py --ids bodies.txt [-n 2000]

Builds the real app with ``create_app(settings)``, runs its lifespan (model loaded, pool open, online
cache listening), then times with time.perf_counter (wall) and time.thread_time (CPU of this thread):
  * the whole app through ASGI, called directly (POST /predict with the online cache warm and with
    it off, GET /health): what the HTTP server hands to the app, minus sockets and HTTP parsing;
  * each step of the /predict handler, with the cache warm and off, on the objects the handler uses;
  * the steps in isolation, with the alternatives the handler does not take, to size them.
Nothing in src/ is modified: the cache is switched off and on through its own flag.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROWS: list[tuple[str, float, float]] = []
ROUNDS = 5


def record(label: str, wall_us: float, cpu_us: float) -> None:
    ROWS.append((label, wall_us, cpu_us))
    print(f"  {label:<62} {wall_us:9.1f} µs wall {cpu_us:9.1f} µs CPU", flush=True)


def time_sync(label: str, fn: Callable[[int], Any], n: int, repeat: int = 5) -> float:
    fn(0)
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        for i in range(n):
            fn(i)
        walls.append((time.perf_counter_ns() - t0) / n / 1000)
        cpus.append((time.thread_time_ns() - c0) / n / 1000)
    w, c = statistics.median(walls), statistics.median(cpus)
    record(label, w, c)
    return w, c


async def time_async(label: str, fn: Callable[[int], Awaitable[Any]], n: int, repeat: int = 3) -> float:
    await fn(0)
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        for i in range(n):
            await fn(i)
        walls.append((time.perf_counter_ns() - t0) / n / 1000)
        cpus.append((time.thread_time_ns() - c0) / n / 1000)
    w, c = statistics.median(walls), statistics.median(cpus)
    record(label, w, c)
    return w, c


def asgi_caller(app, method: str, path: str, body: bytes = b""):
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    if body:
        headers.append((b"content-length", str(len(body)).encode()))
    scope_base = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }

    async def call(bodies: list[bytes] | None = None, i: int = 0) -> int:
        payload = bodies[i % len(bodies)] if bodies else body
        scope = dict(scope_base)
        if bodies:
            scope["headers"] = [*headers[:2], (b"content-length", str(len(payload)).encode())]
        sent = False
        status = 0

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        return status

    return call


# --------------------------------------------------------------------------- probes


class Probes:
    """Thread-CPU time per probe, exclusive of nested probes (requests run one at a time).

    time.thread_time_ns is a real system call (~1.3 µs here), so each probe's own cost is calibrated
    (an empty probe, and an empty probe nested in another) and subtracted as the run goes."""

    def __init__(self) -> None:
        self.excl: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.stack: list[list] = []
        self.own = self.to_parent = 0
        self.calibrate()

    def calibrate(self, n: int = 20000) -> None:
        inner = self.sync("_inner", lambda: None)
        outer = self.sync("_outer", lambda: [inner() for _ in range(4)])
        empty = self.sync("_empty", lambda: None)
        for _ in range(n):
            empty()
            outer()
        self.own = self.excl["_empty"] // n
        # what 4 nested empty probes add to their parent, beyond an empty parent's own cost
        self.to_parent = (self.excl["_outer"] // n - self.own) // 4
        self.excl.clear()
        self.calls.clear()

    def enter(self, name: str) -> None:
        self.stack.append([name, time.thread_time_ns(), 0])

    def exit(self) -> None:
        name, t0, child = self.stack.pop()
        d = time.thread_time_ns() - t0
        self.excl[name] = self.excl.get(name, 0) + d - child - self.own
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.stack:
            self.stack[-1][2] += d + self.to_parent

    def sync(self, name: str, fn):
        def wrapper(*args, **kwargs):
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()

        return wrapper

    def coro(self, name: str, fn):
        async def wrapper(*args, **kwargs):
            self.enter(name)
            try:
                return await fn(*args, **kwargs)
            finally:
                self.exit()

        return wrapper


# Printed in this order; indentation shows where each probe sits in the request.
PROBE_TREE = [
    ("asgi", "whole app (rest: middleware stack incl. metrics, routing, request/response objects)"),
    ("request", "  request: body read + PredictRequest.model_validate_json"),
    ("endpoint", "  endpoint: predict handler (rest: memo lookup, metrics, prediction log, dict)"),
    ("read", "    online read: reader.read (rest: cache lookup, decoding x14, UserFeatures)"),
    ("key", "      entity key: serialize_entity_key"),
    ("getconn", "      pool: getconn"),
    ("execute", "      psycopg: conn.execute (send, wait, receive)"),
    ("fetchall", "      psycopg: cursor.fetchall (load rows)"),
    ("putconn", "      pool: putconn (+ connection __aexit__)"),
    ("problems", "    freshness checks: service.problems"),
    ("model", "    model: predictor.predict_one (ONNX)"),
    ("serialize", "    response: orjson.dumps"),
]


async def instrumented(app, service, model, call, bodies: list[bytes], n: int) -> None:
    import fastapi.routing as fr
    import orjson
    import psycopg
    import psycopg_pool
    import starlette.requests as sr

    from streamflow.serving.app import PredictRequest

    probes = Probes()
    reader = service.reader
    patches: list[tuple[object, str, object]] = []

    def patch(obj, attr: str, new) -> None:
        patches.append(
            (obj, attr, obj.__dict__.get(attr, _MISSING) if hasattr(obj, "__dict__") else _MISSING)
        )
        setattr(obj, attr, new)

    patch(fr, "run_endpoint_function", probes.coro("endpoint", fr.run_endpoint_function))
    patch(sr.Request, "body", probes.coro("request", sr.Request.body))
    patch(PredictRequest, "model_validate_json", probes.sync("request", PredictRequest.model_validate_json))
    patch(orjson, "dumps", probes.sync("serialize", orjson.dumps))
    patch(reader, "read", probes.coro("read", reader.read))
    patch(reader, "_key", probes.sync("key", reader._key))
    patch(
        psycopg_pool.AsyncConnectionPool,
        "getconn",
        probes.coro("getconn", psycopg_pool.AsyncConnectionPool.getconn),
    )
    patch(
        psycopg_pool.AsyncConnectionPool,
        "putconn",
        probes.coro("putconn", psycopg_pool.AsyncConnectionPool.putconn),
    )
    patch(psycopg.AsyncConnection, "__aexit__", probes.coro("putconn", psycopg.AsyncConnection.__aexit__))
    patch(psycopg.AsyncConnection, "execute", probes.coro("execute", psycopg.AsyncConnection.execute))
    patch(psycopg.AsyncCursor, "fetchall", probes.coro("fetchall", psycopg.AsyncCursor.fetchall))
    patch(service, "problems", probes.sync("problems", service.problems))
    patch(model.predictor, "predict_one", probes.sync("model", model.predictor.predict_one))
    outer = probes.coro("asgi", call)
    try:
        for i in range(200):  # warm
            await outer(bodies, i)
        probes.excl.clear()
        probes.calls.clear()
        for i in range(n):
            await outer(bodies, i)
    finally:
        for obj, attr, old in reversed(patches):
            if old is _MISSING:
                delattr(obj, attr)
            else:
                setattr(obj, attr, old)
    total = sum(probes.excl.values()) / n / 1000
    for key, label in PROBE_TREE:
        us = probes.excl.get(key, 0) / n / 1000
        print(f"  {label:<92} {us:8.1f} µs {us / total:6.1%}")
    per_request = sum(probes.calls.values()) // n
    label = (
        f"total (probe cost subtracted: {probes.own} ns own, {probes.to_parent} ns to parent, x{per_request})"
    )
    print(f"  {label:<92} {total:8.1f} µs")


_MISSING = object()


def forest_size(settings, model) -> None:
    import mlflow

    from streamflow.training.tracking import use_mlflow

    use_mlflow(settings)
    pipeline = mlflow.sklearn.load_model(f"models:/{model.name}/{model.version}")
    clf = pipeline.steps[-1][1]
    trees = getattr(clf, "estimators_", None)
    if trees is None:
        return
    flat = [t for t in (trees.ravel() if hasattr(trees, "ravel") else trees)]
    nodes = sum(t.tree_.node_count for t in flat)
    depth = statistics.mean(t.tree_.max_depth for t in flat)
    print(
        f"    (the model: {len(flat)} trees, {nodes:,} nodes, mean max depth {depth:.1f}: a row walks "
        f"~{len(flat)} root-to-leaf paths through ~{nodes * 40 / 1e6:.0f} MB of nodes, mostly cache misses)"
    )


@contextlib.contextmanager
def cache_off(reader):
    """Every read goes to PostgreSQL (and every prediction to the model) while inside."""
    cache = reader.cache
    cache.enabled = False
    try:
        yield
    finally:
        cache.enabled = True


async def main_async(ids: list[str], n: int) -> None:
    import orjson
    from pydantic import TypeAdapter

    from streamflow.serving.app import Prediction, PredictRequest, create_app
    from streamflow.settings import Settings

    settings = Settings()
    app = create_app(settings)
    service = app.state.service
    async with app.router.lifespan_context(app):
        model = service.model()
        spec = model.spec
        reader = service.reader
        bodies = [json.dumps({"user_id": u}).encode() for u in ids]
        k = len(ids)
        deadline = time.monotonic() + 30
        while not reader.cache.usable and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        print(
            f"model version {model.version}, {len(spec.names)} features, {k} user ids, n={n} per step, "
            f"online cache {'on' if reader.cache.usable else 'OFF: ' + reader.cache.reason}\n"
        )
        print("whole app via ASGI (no sockets, no HTTP parsing):")
        predict_call = asgi_caller(app, "POST", "/predict")
        health_call = asgi_caller(app, "GET", "/health")
        statuses = {await predict_call(bodies, i) for i in range(k)}  # every user cached and scored
        assert statuses == {200}, statuses
        total = await time_async("POST /predict, online cache warm", lambda i: predict_call(bodies, i), n)
        with cache_off(reader):
            await time_async("POST /predict, online cache off", lambda i: predict_call(bodies, i), n)
        health = await time_async("GET /health", lambda i: health_call(), n)

        print("\nPOST /predict, cache warm, with probes (CPU µs per request, exclusive of nested probes):")
        await instrumented(app, service, model, predict_call, bodies, n)
        print("\nPOST /predict, cache off, with probes:")
        with cache_off(reader):
            await instrumented(app, service, model, predict_call, bodies, n)

        print("\nsteps of POST /predict in isolation, and the alternatives the handler does not take:")
        time_sync(
            "request: PredictRequest.model_validate_json(body)",
            lambda i: PredictRequest.model_validate_json(bodies[i % k]),
            n * 5,
        )
        adapter_req = TypeAdapter(PredictRequest)
        time_sync(
            "    FastAPI's way: json.loads + validate_python",
            lambda i: adapter_req.validate_python(json.loads(bodies[i % k])),
            n * 5,
        )
        await time_async("online read: cache hit", lambda i: reader.read([ids[i % k]], spec), n * 5)
        await time_async(
            "online read: PostgreSQL (key, pool, query, decode)",
            lambda i: reader._fetch([ids[i % k]], spec),
            n,
        )
        everyone = [(await reader._fetch([u], spec))[0] for u in ids]
        time_sync(
            "freshness/completeness: service.problems(found, model)",
            lambda i: service.problems(everyone[i % k], model),
            n * 5,
        )
        time_sync(
            "model: predictor.predict_one, cycling over the users",
            lambda i: model.predictor.predict_one(everyone[i % k].values),
            n * 5,
        )
        forest_size(settings, model)
        found = everyone[0]
        probability = model.predictor.predict_one(found.values)
        content = {
            "user_id": ids[0],
            "prediction": int(probability >= model.threshold),
            "probability": probability,
            "threshold": model.threshold,
            "model": {"name": model.name, "version": model.version},
            "features_used": found.values,
            "as_of": found.as_of,
        }
        time_sync(
            "response: orjson.dumps(dict)", lambda i: orjson.dumps(content, option=orjson.OPT_UTC_Z), n * 5
        )
        adapter_resp = TypeAdapter(Prediction)
        time_sync(
            "    FastAPI's way: Prediction validation + dump_json",
            lambda i: adapter_resp.dump_json(adapter_resp.validate_python(content)),
            n * 5,
        )
        m = service.metrics
        time_sync(
            "metrics: predictions.labels().inc() + middleware's requests/latency",
            lambda i: (
                m.predictions.labels("0", str(model.version)).inc(),
                m.requests.labels("/predict", "POST", "200").inc(),
                m.latency.labels("/predict", "POST", "200").observe(0.001),
            ),
            n * 5,
        )
        print(
            f"  uninstrumented at the start: /predict {total[1]:.0f} µs CPU, /health {health[1]:.0f} µs CPU"
        )

        print("\nthe API's background watcher (Service.refresh every model_poll_interval_s):")
        refresh_wall, refresh_cpu = [], []
        for _ in range(10):
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            service.refresh()
            refresh_wall.append((time.perf_counter_ns() - t0) / 1e6)
            refresh_cpu.append((time.thread_time_ns() - c0) / 1e6)
        from streamflow.features.materialize import last_materialization
        from streamflow.monitoring.drift import latest_drift_share

        client = service.holder._client()
        target = service.db_target
        parts = {
            "MlflowClient.get_model_version_by_alias": lambda: client.get_model_version_by_alias(
                settings.model_name, settings.production_alias
            ),
            "last_materialization (new connection, 2 queries)": lambda: last_materialization(
                settings, target=target
            ),
            "latest_drift_share (new connection, 1 query)": lambda: latest_drift_share(
                settings, target=target
            ),
        }
        print(
            f"  Service.refresh: {statistics.median(refresh_cpu):.1f} ms CPU"
            f" ({statistics.median(refresh_wall):.1f} ms wall)"
            f" per poll, every {settings.model_poll_interval_s:g} s; Python work that holds the GIL"
            f" in slices of up to {sys.getswitchinterval() * 1000:g} ms while requests wait. Its parts:"
        )
        for label, fn in parts.items():
            cpu, wall = [], []
            for _ in range(10):
                c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                fn()
                wall.append((time.perf_counter_ns() - t0) / 1e6)
                cpu.append((time.thread_time_ns() - c0) / 1e6)
            print(
                f"    {label:<66} {statistics.median(cpu):6.1f} ms CPU {statistics.median(wall):6.1f} ms wall"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=Path, required=True, help="bodies.txt of bench_serve.py")
    p.add_argument("-n", type=int, default=2000)
    a = p.parse_args()
    ids = [json.loads(x)["user_id"] for x in a.ids.read_text().splitlines() if x]
    try:
        import uvloop

        uvloop.run(main_async(ids, a.n))
    except ImportError:
        asyncio.run(main_async(ids, a.n))


if __name__ == "__main__":
    main()
