"""Connection guard: uvicorn's HTTP protocol with the timeouts and bounds it lacks.

uvicorn times out only idle keep-alive connections. A client that opens a connection and sends
its headers (or its body) a byte at a time holds a file descriptor, and for an upload a thread and
a temporary file, for as long as it likes. ``GuardedProtocol`` adds, per connection:

- a header timeout: the request line and headers must arrive within ``header_timeout_s`` of the
  connection (or of the previous response); else 408 and the connection is closed;
- a body timeout: while a request body is incomplete and the application waits for it, no
  ``body_timeout_s`` may pass without a byte; else the application sees the client as gone (an
  upload removes its temporary file at once, as on any disconnect), the client gets 408, and the
  connection is closed;
- bounds on open connections, per client address and in all: one beyond is answered 503 at once
  and closed, before any byte of it is read.

It subclasses uvicorn's httptools protocol and relies on its callbacks (``on_message_begin``,
``on_headers_complete``, ``on_body``, ``on_message_complete``, ``on_response_complete``); the
tests in ``tests/service/test_guard.py`` pin that behaviour.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _raw_problem(status: int, reason: str, code: str, detail: str) -> bytes:
    body = json.dumps(
        {"type": f"/problems/{code}", "title": reason, "status": status, "detail": detail}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return head.encode() + b"\r\n" + body


class Guard:
    """The limits, and the per-client connection counts of one server process."""

    def __init__(
        self,
        header_timeout_s: float,
        body_timeout_s: float,
        max_connections: int,
        max_client_connections: int,
    ) -> None:
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.max_client_connections = max_client_connections
        self.open = 0
        self.per_client: Counter[str] = Counter()
        self.refused = 0
        self.timed_out = 0

    def protocol(self) -> type[HttpToolsProtocol]:
        """A protocol class bound to this guard, for ``uvicorn.Config(http=...)``."""
        guard = self

        class Bound(GuardedProtocol):
            pass

        Bound.guard = guard
        return Bound


class GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header/body timeouts and connection bounds (see the module)."""

    guard: Guard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        g = self.guard
        self._host = self.client[0] if self.client else "?"
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._reading_body = False
        if g.open >= g.max_connections or g.per_client[self._host] >= g.max_client_connections:
            g.refused += 1
            which = (
                "max_connections"
                if g.open >= g.max_connections
                else "max_client_connections per client address"
            )
            transport.write(
                _raw_problem(
                    503,
                    "Service Unavailable",
                    "too-many-connections",
                    f"too many open connections ({which}); retry later",
                )
            )
            transport.close()
            return
        self._counted = True
        g.open += 1
        g.per_client[self._host] += 1
        self._arm(g.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if getattr(self, "_counted", False):
            self._counted = False
            self.guard.open -= 1
            self.guard.per_client[self._host] -= 1
            if self.guard.per_client[self._host] <= 0:
                del self.guard.per_client[self._host]
        super().connection_lost(exc)

    # -- timers ---------------------------------------------------------------------------
    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
            self._timer = None

    def _header_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        self.guard.timed_out += 1
        detail = f"the request headers did not arrive within {self.guard.header_timeout_s} s"
        self.transport.write(_raw_problem(408, "Request Timeout", "request-timeout", detail))
        self.transport.close()

    def _body_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing() or not self._reading_body:
            return
        if self.flow.read_paused:  # the application is behind, not the client
            self._arm(self.guard.body_timeout_s, self._body_timeout)
            return
        self.guard.timed_out += 1
        cycle = self.cycle
        started = cycle is not None and cycle.response_started
        if cycle is not None:
            cycle.disconnected = True  # the application's receive() answers http.disconnect
            cycle.message_event.set()
        if not started:
            detail = f"no byte of the request body arrived for {self.guard.body_timeout_s} s"
            self.transport.write(_raw_problem(408, "Request Timeout", "request-timeout", detail))
        self.transport.close()

    # -- parser callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:  # a pipelined or keep-alive request: its own header deadline
            self._arm(self.guard.header_timeout_s, self._header_timeout)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._reading_body = True
        self._arm(self.guard.body_timeout_s, self._body_timeout)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._reading_body:
            self._arm(self.guard.body_timeout_s, self._body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_body = False
        self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn's keep-alive timer now bounds the wait for the next request's first byte;
        # on_message_begin arms the header deadline when it comes.
