"""uvicorn's httptools protocol, with the request limits uvicorn does not have.

uvicorn (0.55, both its httptools and h11 protocols) closes a connection only when it is idle
after a response (``timeout_keep_alive``). A request whose line, headers or body never finish
holds its connection forever, and so does a connection that never sends a byte: the keep-alive
timer is armed after a response only (uvicorn issues #157 and #1192). httptools also buffers a
header of any size. This subclass adds, per connection:

* a deadline for receiving each request, from its first byte to its last (line, headers and
  body): past it the client gets ``408`` and the connection is closed. Only receiving is timed,
  never the app's work. One timer per connection, re-armed only when it fires, so a keep-alive
  connection does not pay a timer per request;
* the keep-alive timeout from the start, for a connection that has sent nothing yet;
* a cap on the request line + headers (``431``) and on the body (``413``, from ``Content-Length``
  before the app runs, or while a chunked body arrives).

A request the app was already handling when it is refused (a body too slow or too long) ends
in the app as a client disconnect; the app answers it with the status recorded here under
:data:`REJECTED_STATUS` in the request's scope (its metrics count it on its route). Every refusal
is also counted in ``streamflow_http_rejected_total{reason}``, through the counter the app's
lifespan puts in uvicorn's lifespan state under :data:`REJECTED_COUNTER`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from streamflow.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Keys shared with the app: the status of a refused request (in its scope), and the counter
# of refusals (in uvicorn's lifespan state, which uvicorn hands to every protocol instance).
REJECTED_STATUS = "streamflow.rejected_status"
REJECTED_COUNTER = "streamflow.rejected_counter"
# After a refusal the connection is shut for writing at once (the client reads the answer, then
# the end), and what the client still sends is read and dropped for this long before it is closed:
# closing with unread bytes would reset the connection, and a reset can discard the answer
# before the client reads it ("lingering close", as nginx does).
LINGER_S = 1.0


@dataclass(frozen=True)
class RequestLimits:
    timeout_s: float
    max_body_bytes: int
    max_header_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(settings.api_request_timeout_s, settings.api_max_body_bytes, settings.api_max_header_bytes)


_limits: RequestLimits | None = None


def limits() -> RequestLimits:
    """This process's limits, from its Settings (a worker process reads its own, like the app)."""
    global _limits
    if _limits is None:
        _limits = RequestLimits.from_settings(get_settings())
    return _limits


def _response(status: int, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": message, "code": code})
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        lim = limits()
        self._timeout = lim.timeout_s
        self._max_body = lim.max_body_bytes
        self._max_head = lim.max_header_bytes
        self._started: float | None = None  # loop time of the first byte of the request being received
        self._deadline: asyncio.TimerHandle | None = None
        self._head_done = False
        self._head_bytes = 0
        self._body_bytes = 0
        self._refused = False

    @property
    def _closing(self) -> bool:
        return self._refused or self.transport.is_closing()

    # -- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms this only after a response: a connection that never sends a byte would stay.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def data_received(self, data: bytes) -> None:
        if self._refused:  # lingering: read and dropped
            return
        super().data_received(data)
        if self._started is not None and not self._head_done and not self._closing:
            # Still in the request line or headers after this read: all of it counts (a pipelined
            # request can be charged for the tail of its predecessor that arrived in the same read).
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._reject(
                    431,
                    "headers_too_large",
                    f"request line and headers larger than {self._max_head} bytes",
                )

    # -- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._started = self.loop.time()
        self._head_done = False
        self._head_bytes = self._body_bytes = 0
        if self._deadline is None:
            self._deadline = self.loop.call_at(self._started + self._timeout, self._check_deadline)

    def on_headers_complete(self) -> None:
        if self._closing:  # refused already: parse the rest of this read, start nothing
            return
        declared = next((v for n, v in self.headers if n == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self._max_body:
            self._too_large()  # before the app sees it
            return
        self._head_done = True
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._closing:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body:  # a chunked body (a declared length was checked above)
            self._too_large()
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._started = None
        if not self._closing:
            super().on_message_complete()

    # -- refusals

    def _too_large(self) -> None:
        self._reject(413, "body_too_large", f"request body larger than {self._max_body} bytes")

    def _check_deadline(self) -> None:
        self._deadline = None
        started = self._started
        if started is None or self._closing:  # idle: the keep-alive timeout applies
            return
        due = started + self._timeout
        if self.loop.time() < due:  # a request that began after this timer was armed
            self._deadline = self.loop.call_at(due, self._check_deadline)
            return
        phase = "body" if self._head_done else "headers"
        message = f"request not received within {self._timeout:g} s"
        self._reject(408, f"{phase}_timeout", message, code="request_timeout")

    def _reject(self, status: int, reason: str, message: str, code: str | None = None) -> None:
        """Answer ``status`` if nothing else is being answered on this connection, then close it
        (lingering: see LINGER_S)."""
        current = self.cycle if self._head_done else None  # this request's, once the app has it
        if current is None:
            writable = self.cycle is None or self.cycle.response_complete
        else:
            queued = any(c is current for c, _ in self.pipeline)  # behind a response in flight
            writable = not queued and not current.response_started
        if writable:
            self.transport.write(_response(status, code or reason, message))
        if current is not None and not current.response_complete:
            # The app, if it runs, sees a disconnect; it answers with this status (nothing is sent).
            current.scope[REJECTED_STATUS] = status  # type: ignore[literal-required]
            current.disconnected = True
            current.message_event.set()
        self._refused = True
        self._started = None
        self._unset_keepalive_if_required()
        self.flow.resume_reading()  # drain what the client still sends (reading may be paused)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
        counter = self.app_state.get(REJECTED_COUNTER)
        if counter is not None:
            counter.labels(reason).inc()
        client = f"{self.client[0]}:{self.client[1]} " if self.client else ""
        log.info("%srequest refused (%s): %s", client, status, message)
