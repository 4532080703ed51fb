"""A body-size cap for JSON requests, applied before FastAPI parses them.

Uploads (``POST /v1/datasets``) stream and enforce their own limits; every other request body is
read whole by FastAPI, so it is capped here: at once when Content-Length says too much, and while
it arrives otherwise (chunked bodies: read into memory up to the cap, then replayed).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import problem_of, problem_response

UPLOAD_PATH = "/v1/datasets"


class BodyLimitMiddleware:
    """Answers 413 problem+json to a non-upload request whose body exceeds ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") == UPLOAD_PATH:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._reject(scope, receive, send)
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
            if seen > self.limit:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            problem_of(
                "body-too-large",
                f"request bodies are limited to {self.limit} bytes (max_request_bytes)",
            )
        )
        await response(scope, receive, send)
