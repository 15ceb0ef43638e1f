"""Where one POST /predict spends its time, step by step, in process (no HTTP, no concurrency).

Run by bench_serve.py (settings from STREAMFLOW_* variables):
    python bench/profile_predict.py --ids bodies.txt [-n 2000]

Builds the real app with ``create_app(settings)``, runs its lifespan (model loaded, pool open), then
times with time.perf_counter (wall) and time.thread_time (CPU of this thread):
  * the whole app through ASGI, called directly (POST /predict, GET /health): what the HTTP server
    hands to the app, minus sockets and HTTP parsing;
  * each step of the /predict handler on the same objects the handler uses: request parsing and
    validation, the online read (and its parts: entity-key serialisation, the PostgreSQL round
    trip, value decoding), freshness checks, the ONNX model, response validation + JSON, metrics;
  * cheaper alternatives for the steps that matter, to size the suggestions.
Nothing in src/ is modified: alternatives are re-implemented here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
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
    ("request", "  request: body read + json.loads (starlette Request.json)"),
    ("validate", "  request: solve_dependencies (PredictRequest validation)"),
    ("endpoint", "  endpoint: predict handler (rest: building the response dict, as_of...)"),
    ("read", "    online read: reader.read (rest: asyncio.timeout, decoding x14, UserFeatures)"),
    ("key", "      entity key: serialize_entity_key"),
    ("getconn", "      pool: getconn"),
    ("execute", "      psycopg: conn.execute (compose query, dump params, send, wait, receive)"),
    ("fetchall", "      psycopg: cursor.fetchall (load rows)"),
    ("putconn", "      pool: putconn (+ connection __aexit__)"),
    ("problems", "    freshness checks: service.problems"),
    ("model", "    model: predictor.predict_one (ONNX)"),
    ("serialize", "  response: serialize_response (Prediction validation + dump_json)"),
]


async def instrumented(app, service, model, call, bodies: list[bytes], n: int) -> None:
    import fastapi.routing as fr
    import psycopg
    import psycopg_pool
    import starlette.requests as sr

    probes = Probes()
    reader = service.reader
    patches: list[tuple[object, str, object]] = []

    def patch(obj, attr: str, new) -> None:
        patches.append(
            (obj, attr, obj.__dict__.get(attr, _MISSING) if hasattr(obj, "__dict__") else _MISSING)
        )
        setattr(obj, attr, new)

    patch(fr, "solve_dependencies", probes.coro("validate", fr.solve_dependencies))
    patch(fr, "serialize_response", probes.coro("serialize", fr.serialize_response))
    patch(fr, "run_endpoint_function", probes.coro("endpoint", fr.run_endpoint_function))
    patch(sr.Request, "json", probes.coro("request", sr.Request.json))
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


def decode_fast(rows) -> dict:
    """Feast's value decoding for scalar values, without the generic type_map path."""
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    out = {}
    for _key, name, value, _ts in rows:
        proto = ValueProto.FromString(value)
        kind = proto.WhichOneof("val")
        out[name] = None if kind is None or kind == "null_val" else getattr(proto, kind)
    return out


class LeanReader:
    """A single-user online read with the per-call work hoisted out: the SQL rendered to bytes once
    (feature names inlined as literals), one bytea parameter, direct protobuf decoding."""

    @classmethod
    async def create(cls, reader, spec) -> LeanReader:
        from psycopg import sql

        from streamflow.serving.online import _views

        self = cls()
        self.reader = reader
        parts = [
            sql.SQL(
                "SELECT entity_key, feature_name, value, event_ts FROM {}"
                " WHERE entity_key = %s AND feature_name IN ({})"
            ).format(
                sql.Identifier(reader._schema, f"{reader._project}_{view}"),
                sql.SQL(", ").join(sql.Literal(f) for f in fields),
            )
            for view, fields in _views(spec).items()
        ]
        async with reader._pool.connection() as conn:
            self.query = sql.SQL(" UNION ALL ").join(parts).as_bytes(conn)
        self.nparams = len(parts)
        return self

    async def read(self, user_id: str) -> dict:
        key = self.reader._key(user_id)
        async with asyncio.timeout(2.0), self.reader._pool.connection() as conn:
            cur = await conn.execute(self.query, (key,) * self.nparams)
            rows = await cur.fetchall()
        return decode_fast(rows)


async def main_async(ids: list[str], n: int) -> None:
    import orjson
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto
    from feast.type_map import feast_value_type_to_python_type
    from pydantic import TypeAdapter

    from streamflow.serving import app as app_mod
    from streamflow.serving.app import Prediction, PredictRequest, create_app
    from streamflow.serving.online import UserFeatures
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

        print(f"model version {model.version}, {len(spec.names)} features, {k} user ids, n={n} per step\n")
        print("whole app via ASGI (no sockets, no HTTP parsing):")
        predict_call = asgi_caller(app, "POST", "/predict")
        health_call = asgi_caller(app, "GET", "/health")
        statuses = {await predict_call(bodies, i) for i in range(50)}
        assert statuses == {200}, statuses
        total = await time_async("POST /predict (whole app)", lambda i: predict_call(bodies, i), n)
        health = await time_async("GET /health (whole app)", lambda i: health_call(), n)

        print("\nPOST /predict through ASGI with probes (CPU µs per request, exclusive of nested probes):")
        await instrumented(app, service, model, predict_call, bodies, n)

        print("\nsteps of POST /predict in isolation, and cheaper alternatives:")
        adapter_req = TypeAdapter(PredictRequest)
        time_sync(
            "request: json.loads(body) + PredictRequest validation",
            lambda i: adapter_req.validate_python(json.loads(bodies[i % k])),
            n * 5,
        )
        await time_async(
            "online read: reader.read([user_id]) (total)", lambda i: reader.read([ids[i % k]], spec), n
        )
        time_sync(
            "  entity-key serialisation (protobuf + feast serialize_entity_key)",
            lambda i: reader._key(ids[i % k]),
            n * 5,
        )

        query = reader._query(spec, True)

        async def raw_query(i: int):
            async with reader._pool.connection() as conn:
                cur = await conn.execute(query, {"keys": reader._key(ids[i % k])})
                return await cur.fetchall()

        await time_async("  PostgreSQL round trip (pool checkout + execute + fetchall)", raw_query, n)
        rows = await raw_query(0)
        lean = await LeanReader.create(reader, spec)
        for u in ids:  # the alternative returns exactly what the API reads, for every user
            assert (await lean.read(u)) == (await reader.read([u], spec))[0].values, u
        await time_async(
            "    alternative: lean read (query bytes rendered once, one bytea param)",
            lambda i: lean.read(ids[i % k]),
            n,
        )

        def decode(_: int):
            out = {}
            for _key, name, value, ts in rows:
                proto = ValueProto()
                proto.ParseFromString(value)
                out[name] = feast_value_type_to_python_type(proto)
                _ = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
            return out

        time_sync(
            f"  decode {len(rows)} values (ParseFromString + feast_value_type_to_python_type)", decode, n * 2
        )
        assert decode_fast(rows) == decode(0), (decode_fast(rows), decode(0))
        time_sync("    alternative: FromString + WhichOneof/getattr", lambda i: decode_fast(rows), n * 2)

        found = (await reader.read([ids[0]], spec))[0]
        everyone = [(await reader.read([u], spec))[0] for u in ids]
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
        time_sync(
            "model: predictor.predict_one, the same user every time (cache-hot)",
            lambda i: model.predictor.predict_one(found.values),
            n * 5,
        )
        forest_size(settings, model)

        probability = float(model.predictor.predict_one(found.values))
        content = {
            "user_id": ids[0],
            "prediction": int(probability >= model.threshold),
            "probability": probability,
            "threshold": model.threshold,
            "model": {"name": model.name, "version": model.version},
            "features_used": found.values,
            "as_of": found.as_of,
        }
        adapter_resp = TypeAdapter(Prediction)
        time_sync(
            "response: Prediction validation + dump_json (FastAPI's path)",
            lambda i: adapter_resp.dump_json(adapter_resp.validate_python(content)),
            n * 5,
        )
        time_sync(
            "    alternative: orjson.dumps(dict) (no response model)", lambda i: orjson.dumps(content), n * 5
        )

        m = service.metrics
        time_sync(
            "metrics: predictions.labels().inc() + middleware's requests/latency",
            lambda i: (
                m.predictions.labels("0", str(model.version)).inc(),
                m.requests.labels("/predict", "POST", "200").inc(),
                m.latency.labels("/predict", "POST").observe(0.001),
            ),
            n * 5,
        )
        c1, c2, c3 = (
            m.predictions.labels("0", "1"),
            m.requests.labels("/x", "POST", "200"),
            m.latency.labels("/x", "POST"),
        )
        time_sync(
            "    alternative: cached children (.inc()/.observe() only)",
            lambda i: (c1.inc(), c2.inc(), c3.observe(0.001)),
            n * 5,
        )

        print(
            "\nwhat-if, whole app via ASGI: pieces swapped in THIS process only, variants interleaved "
            f"in {ROUNDS} rounds, medians (CPU µs/request, wall µs/request):"
        )
        stamp = next(iter(found.event_ts.values()))
        cache = {f.user_id: f for f in everyone}
        original_read, original_predict = reader.read, model.predictor.predict_one

        async def lean_read(user_ids, spec_):
            out = []
            for u in user_ids:
                f = UserFeatures(u)
                f.values = await lean.read(u)
                f.event_ts = dict.fromkeys(f.values, stamp)
                out.append(f)
            return out

        async def cached_read(user_ids, spec_):
            return [cache[u] for u in user_ids]

        def stub_model(values):
            return 0.25

        variants = {
            "as is": (original_read, original_predict, "POST"),
            "lean read (SQL bytes once, 1 param, fast decode)": (lean_read, original_predict, "POST"),
            "features from an in-process dict (no PostgreSQL)": (cached_read, original_predict, "POST"),
            "model stubbed (constant), PostgreSQL read kept": (original_read, stub_model, "POST"),
            "features from dict + model stubbed (the framework floor)": (cached_read, stub_model, "POST"),
            "GET /health": (original_read, original_predict, "GET"),
        }
        samples: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        m = max(50, n // ROUNDS)
        try:
            for _ in range(ROUNDS):
                for name, (read_fn, predict_fn, method) in variants.items():
                    reader.read, model.predictor.predict_one = read_fn, predict_fn
                    fn = (
                        (lambda i: predict_call(bodies, i)) if method == "POST" else (lambda i: health_call())
                    )
                    for i in range(20):
                        await fn(i)
                    c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                    for i in range(m):
                        await fn(i)
                    samples[name].append(
                        ((time.perf_counter_ns() - t0) / m / 1000, (time.thread_time_ns() - c0) / m / 1000)
                    )
        finally:
            reader.read = original_read
            del model.predictor.predict_one  # back to the class's method
        base = statistics.median(c for _, c in samples["as is"])
        for name, vals in samples.items():
            cpu = statistics.median(c for _, c in vals)
            wall = statistics.median(w for w, _ in vals)
            print(f"  {name:<60} {cpu:7.0f} µs CPU {wall:7.0f} µs wall  {cpu / base:5.0%} of as-is CPU")
        print(
            "  (PostgreSQL's own CPU per read comes on top of the variants that read it:"
            " pg µs/r in the table)"
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
        import mlflow

        from streamflow import db
        from streamflow.features.store import last_materialization
        from streamflow.training.tracking import use_mlflow

        client = mlflow.MlflowClient()
        parts = {
            "use_mlflow(settings) (set URIs, get/set experiment)": lambda: use_mlflow(settings),
            "MlflowClient().get_model_version_by_alias": lambda: client.get_model_version_by_alias(
                settings.model_name, settings.production_alias
            ),
            "db.target(settings) (embedded server lookup + ensure_database)": lambda: db.target(settings),
            "last_materialization(settings) (new connection, 2 queries)": lambda: last_materialization(
                settings
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
        _ = app_mod


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
