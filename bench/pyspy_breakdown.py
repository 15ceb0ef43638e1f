"""Fold py-spy ``--format raw`` samples of ``streamflow serve`` into the steps of a /predict request.

    python bench/pyspy_breakdown.py pyspy.txt [--us-per-request 800]

Each sample (a stack, root first) is charged to background work (the prediction-log writer, the
online cache's listener) if any of its frames belongs to it, else to the DEEPEST frame that opens a
step below, so time
in psycopg under ``online.read`` is "online read", pydantic under FastAPI's ``serialize_response`` is
"response", and whatever matches nothing (uvicorn, httptools, starlette routing, the event loop) is
"HTTP server + framework". py-spy drops idle threads, so samples are of a thread on CPU OR runnable
and waiting for one: on a busy machine, steps that wake another process (socket writes to the
client or to PostgreSQL) collect the time the server then waits to be scheduled again.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (step, predicate on "function (file:line)"), checked from the leaf towards the root; first hit wins.
STEPS: list[tuple[str, re.Pattern[str]]] = [
    ("model: ONNX predict_one", re.compile(r"predict_one \(streamflow/serving/fast_model\.py")),
    (
        "online read: decode values (protobuf, feast type_map)",
        re.compile(r"(feast_value_type_to_python_type|ParseFromString) \(|\(feast/type_map\.py"),
    ),
    ("online read: entity key (serialize_entity_key)", re.compile(r"(_key|serialize_entity_key) \(")),
    ("online read: psycopg + pool (compose, send, receive, fetch)", re.compile(r"\((psycopg|psycopg_pool)/")),
    (
        "online read: other (online.py, Service.read)",
        re.compile(r"\.read \(streamflow/serving/(online|app)\.py"),
    ),
    ("freshness checks: Service.problems", re.compile(r"(problems|missing) \(streamflow/serving/")),
    (
        "response: validation + JSON (serialize_response)",
        re.compile(r"(serialize_response|jsonable_encoder) \(fastapi/"),
    ),
    (
        "request: body + JSON + validation",
        re.compile(
            r"(request_body_to_args|solve_dependencies|Request\.json|Request\.body|model_validate_json) \("
        ),
    ),
    (
        "socket writes (uvicorn RequestResponseCycle.send)",
        re.compile(r"RequestResponseCycle\.send \(uvicorn/"),
    ),
    ("metrics (prometheus_client)", re.compile(r"\(prometheus_client/")),
    (
        "predict handler body (app.py)",
        re.compile(r"create_app\.<locals>\.predict \(streamflow/serving/app\.py"),
    ),
    (
        "background: model/materialization watcher thread",
        re.compile(
            r"(ModelHolder\.refresh|Service\.refresh|last_materialization|_worker) \(|\((mlflow|sqlalchemy)/"
        ),
    ),
]
OTHER = "HTTP server + framework (uvicorn, httptools, starlette, asyncio)"
# Work off the request path, charged whole: any frame of the stack decides.
BACKGROUND: list[tuple[str, re.Pattern[str]]] = [
    ("background: prediction log writer (COPY)", re.compile(r"\(streamflow/monitoring/prediction_log\.py")),
    ("background: online cache listener", re.compile(r"\(streamflow/serving/online_cache\.py")),
]


def parse(path: Path) -> Counter[str]:
    steps: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")[1:]  # drop "thread (tid)"
        step = next((name for name, p in BACKGROUND if any(p.search(f) for f in frames)), OTHER)
        for frame in reversed(frames) if step == OTHER else ():
            hit = next((name for name, pattern in STEPS if pattern.search(frame)), None)
            if hit:
                step = hit
                break
        steps[step] += int(count)
    return steps


def report(path: Path, us_per_request: float | None = None) -> None:
    steps = parse(path)
    total = sum(steps.values())
    if not total:
        print("no samples")
        return
    print(f"  {'step':<62} {'share':>6}" + (f" {'µs/req':>8}" if us_per_request else ""))
    for name, count in steps.most_common():
        share = count / total
        extra = f" {share * us_per_request:8.0f}" if us_per_request else ""
        print(f"  {name:<62} {share:6.1%}{extra}")
    print(f"  ({total} samples)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw", type=Path)
    p.add_argument("--us-per-request", type=float)
    a = p.parse_args()
    report(a.raw, a.us_per_request)


if __name__ == "__main__":
    main()
