"""The service's outermost layer (pure ASGI): a bound on request bodies, enforced while they
stream in, and security headers on every response."""

from __future__ import annotations

import json


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def _error_body(status: int, code: str, detail: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": code, "detail": detail}).encode()


class GuardMiddleware:
    """Pure ASGI: refuses bodies over `max_body_bytes` (from Content-Length up front, or while
    streaming a chunked body) with 413, and adds security headers to every response."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        too_large = f"request body is larger than the limit of {limit} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await self._reply(send, *_error_body(400, "bad_request", "bad Content-Length"))
                if declared > limit:
                    return await self._reply(send, *_error_body(413, "upload_too_large", too_large))
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = dict(message, headers=headers)
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge:
            if not started:
                await self._reply(send, *_error_body(413, "upload_too_large", too_large))

    @staticmethod
    async def _reply(send, status: int, body: bytes) -> None:
        await send({
            "type": "http.response.start", "status": status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"), *SECURITY_HEADERS],
        })
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    """A body past the limit, raised while it streams in."""
