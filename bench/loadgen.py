"""Closed-loop HTTP load generator, run as its own process by bench_serve.py.

    python bench/loadgen.py URL [--method POST --bodies bodies.txt] --concurrency 16 --duration 10
        [--engine auto|wrk|asyncio]

Keeps ``--concurrency`` keep-alive HTTP/1.1 connections busy for ``--duration`` seconds (each
connection sends its next request as soon as the previous response is read) and prints ONE line of
JSON: requests, seconds, rps, p50_ms, p99_ms, errors (non-2xx responses + socket errors/timeouts),
and the engine used. POST bodies come from ``--bodies`` (one JSON body per line), cycled over.

Engines: ``wrk`` (C, event-driven; a Lua script cycles the bodies and prints exact percentiles)
when it is on PATH, else a small asyncio client (uvloop if installed) built on asyncio Protocols:
requests are pre-encoded bytes, written from ``data_received`` as soon as the previous response is
complete (no task, stream reader or timeout object per request), responses are parsed by
Content-Length without an HTTP library, latencies are ints appended to a list. Measured here it
costs about twice wrk's CPU per request; a watchdog counts requests older than --timeout as errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

# --------------------------------------------------------------------------- wrk

_WRK_LUA = r"""
local bodies = {}
local method = "%(method)s"
for line in io.lines("%(bodies)s") do
  if #line > 0 then bodies[#bodies + 1] = line end
end
local counter = 0
local next_id = 1

setup = function(thread)
  thread:set("start", next_id)
  next_id = next_id + 1
end

init = function(args)
  counter = (tonumber(start) or 1) * 7919
  wrk.headers["Content-Type"] = "application/json"
end

request = function()
  if #bodies == 0 then return wrk.format(method, nil) end
  counter = counter + 1
  return wrk.format(method, nil, nil, bodies[(counter %% #bodies) + 1])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "mean_us": %%.1f, ' ..
    '"connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def run_wrk(
    url: str, method: str, bodies: Path | None, concurrency: int, duration: float, timeout: float
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        body_file = bodies if bodies else Path(tmp) / "none.txt"
        if not bodies:
            body_file.write_text("")
        script = Path(tmp) / "bench.lua"
        script.write_text(_WRK_LUA % {"method": method, "bodies": str(body_file.resolve())})
        cmd = [
            "wrk",
            "-t1",  # one thread: 16 connections are nothing for wrk's event loop, and the box has 2 cores
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            f"--timeout={max(1, round(timeout))}s",
            "-s",
            str(script),
            url,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    r = json.loads(line.removeprefix("WRKJSON "))
    seconds = r["duration_us"] / 1e6
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {
        "engine": "wrk",
        "requests": r["requests"],
        "seconds": seconds,
        "rps": r["requests"] / seconds,
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "mean_ms": r["mean_us"] / 1000,
        "errors": errors,
        "error_detail": {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]},
    }


# --------------------------------------------------------------------------- asyncio


def _requests(url: str, method: str, bodies: list[bytes]) -> tuple[str, int, list[bytes]]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: keep-alive\r\n"
    if not bodies:
        return host, port, [(head + "\r\n").encode()]
    return (
        host,
        port,
        [
            (head + f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n").encode() + b
            for b in bodies
        ],
    )


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends the next request from data_received as soon as a response is
    complete (no task, no StreamReader, no wait_for per request)."""

    def __init__(self, gen: _AsyncLoad, k: int) -> None:
        self.gen, self.i, self.buf = gen, k * 7919, b""
        self.transport: asyncio.Transport | None = None
        self.need = -1  # body bytes still expected; -1 while reading the head
        self.status = 0
        self.sent_at = 0
        self.inflight = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        gen = self.gen
        if gen.perf() >= gen.deadline:
            self.transport.close()
            return
        req = gen.requests[self.i % len(gen.requests)]
        self.i += 1
        self.buf, self.need, self.inflight = b"", -1, True
        self.sent_at = gen.perf()
        self.transport.write(req)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            self.status = int(head[9:12])
            i = head.find(b"\r\ncontent-length:")
            if i < 0:  # uvicorn always sends Content-Length for these endpoints
                self.gen.fail(self)
                return
            j = head.find(b"\r\n", i + 2)
            self.need = int(head[i + 17 : j if j >= 0 else len(head)])
            self.buf = self.buf[end + 4 :]
        if len(self.buf) >= self.need:
            gen = self.gen
            self.inflight = False
            gen.latencies.append(gen.perf() - self.sent_at)
            if not 200 <= self.status < 300:
                gen.non2xx += 1
            self.send()

    def connection_lost(self, exc) -> None:
        self.gen.lost(self)


class _AsyncLoad:
    def __init__(
        self, url: str, method: str, bodies: list[bytes], concurrency: int, duration: float, timeout: float
    ):
        self.host, self.port, self.requests = _requests(url, method, bodies)
        self.concurrency, self.duration, self.timeout = concurrency, duration, timeout
        self.perf = time.perf_counter_ns
        self.latencies: list[int] = []
        self.non2xx = self.socket_errors = 0
        self.open: set[_Connection] = set()
        self.deadline = 0

    def fail(self, conn: _Connection) -> None:
        self.socket_errors += 1
        conn.inflight = False  # counted here, not again in lost()
        conn.transport.abort()  # connection_lost follows, which reconnects

    def lost(self, conn: _Connection) -> None:
        self.open.discard(conn)
        if self.perf() < self.deadline:
            if conn.inflight:  # died with a request in flight
                self.socket_errors += 1
            asyncio.get_running_loop().create_task(self.connect(conn.i // 7919))
        elif not self.open:
            self.finished.set()

    async def connect(self, k: int) -> None:
        loop = asyncio.get_running_loop()
        while self.perf() < self.deadline:
            conn = _Connection(self, k)
            self.open.add(conn)
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda c=conn: c, self.host, self.port), self.timeout
                )
                return
            except (TimeoutError, OSError):
                self.open.discard(conn)
                self.socket_errors += 1
                await asyncio.sleep(0.05)
        if not self.open:
            self.finished.set()

    async def run(self) -> dict:
        self.finished = asyncio.Event()
        start = self.perf()
        self.deadline = start + int(self.duration * 1e9)
        await asyncio.gather(*(self.connect(k) for k in range(self.concurrency)))
        limit = self.timeout * 1e9
        while not self.finished.is_set():  # watchdog: a request older than --timeout is an error
            await asyncio.sleep(0.1)
            now = self.perf()
            for conn in list(self.open):
                if conn.inflight and now - conn.sent_at > limit and not conn.transport.is_closing():
                    self.fail(conn)
            if now > self.deadline + limit and not self.open:
                break
        seconds = (self.perf() - start) / 1e9
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q / 100 * len(lat)))] / 1e6 if lat else float("nan")

        return {
            "engine": "asyncio",
            "requests": len(lat),
            "seconds": seconds,
            "rps": len(lat) / seconds,
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "mean_ms": sum(lat) / len(lat) / 1e6 if lat else float("nan"),
            "errors": self.non2xx + self.socket_errors,
            "error_detail": {k: v for k, v in (("status", self.non2xx), ("socket", self.socket_errors)) if v},
        }


def run_asyncio(
    url: str, method: str, bodies: Path | None, concurrency: int, duration: float, timeout: float
) -> dict:
    lines = [x.encode() for x in bodies.read_text().splitlines() if x] if bodies else []
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(_AsyncLoad(url, method, lines, concurrency, duration, timeout).run())


def run(
    url: str,
    method: str,
    bodies: Path | None,
    concurrency: int,
    duration: float,
    engine: str = "auto",
    timeout: float = 10.0,
) -> dict:
    if engine == "auto":
        engine = "wrk" if shutil.which("wrk") else "asyncio"
    fn = run_wrk if engine == "wrk" else run_asyncio
    return fn(url, method, bodies, concurrency, duration, timeout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--method", default="GET")
    p.add_argument("--bodies", type=Path, help="One request body per line, cycled over.")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=10.0, help="Per-request timeout (counts as an error).")
    p.add_argument(
        "--engine", choices=("auto", "wrk", "asyncio"), default=os.environ.get("BENCH_ENGINE", "auto")
    )
    a = p.parse_args()
    result = run(a.url, a.method, a.bodies, a.concurrency, a.duration, a.engine, a.timeout)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
