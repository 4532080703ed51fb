"""A body-size cap for JSON requests, applied before FastAPI parses them.

Uploads (``POST /v1/datasets``) and ``/evaluate`` stream and bound their own bodies. A method
that takes no body (GET, HEAD, DELETE, OPTIONS) is passed on unread: its route never reads one,
so nothing is buffered. Every other request body is read whole by FastAPI, so it is capped here:
at once when Content-Length says too much, and while it arrives otherwise (chunked bodies: read
into memory up to the cap, then replayed). A stalled body is cut by the connection guard's body
timeout (service/guard.py).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import problem_of, problem_response

UPLOAD_PATH = "/v1/datasets"
BODILESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def _self_bounded(method: str, path: str) -> bool:
    """Routes that read and bound their own bodies as they arrive."""
    path = path.rstrip("/")
    if method != "POST":
        return False
    return path == UPLOAD_PATH or (path.startswith("/v1/estimates/") and path.endswith("/evaluate"))


class BodyLimitMiddleware:
    """Answers 413 problem+json to a non-upload request whose body exceeds ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        bodiless = scope.get("method") in BODILESS
        if scope["type"] != "http" or bodiless or _self_bounded(scope["method"], scope["path"]):
            # GET, HEAD, DELETE: their routes read no body, so none is buffered (uvicorn stops
            # reading past its small high-water mark; the guard's body timeout cuts a stall).
            await self.app(scope, receive, send)
            return
        limit = self.limit
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._reject(scope, receive, send, limit)
                return
        # Read the body first (FastAPI reads it whole anyway), then replay it to the app.
        buffered: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > limit:
                await self._reject(scope, receive, send, limit)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        detail = f"request bodies are limited to {limit} bytes (max_request_bytes)"
        response = problem_response(problem_of("body-too-large", detail))
        await response(scope, receive, send)
