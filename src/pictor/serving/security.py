"""Three ASGI middlewares in front of every route: loopback Host names without a token, a
bearer token and a request-body cap.

- `LoopbackHostOnly`: a server without a token answers only requests whose Host header names
  a loopback address (localhost, 127.0.0.0/8, [::1]), any port; others get 403. Without it a
  web page could reach the server by DNS rebinding: its own name, re-pointed at 127.0.0.1,
  makes the browser send same-origin requests that carry `Host: evil.example`.

- `BearerAuth`: when a token is configured, every HTTP request except the open paths (/healthz
  and the static page shell, which holds no data) must carry `Authorization: Bearer <token>`,
  compared in constant time (hmac.compare_digest, so the time taken does not reveal how many
  leading characters were right); otherwise 401 with `WWW-Authenticate: Bearer` (RFC 6750,
  Sec. 3).
- `BodySizeLimit`: a request whose Content-Length exceeds the cap, or whose streamed (chunked)
  body grows past it, gets 413 before the body reaches a route.

Both are plain ASGI (no BaseHTTPMiddleware), so server-sent event streams pass through unbuffered.

Errors are `{"detail": ...}` as FastAPI writes them, except on the OpenAI-compatible paths
(OPENAI_PATHS), which answer in OpenAI's error shape `{"error": {"message", "type", "param",
"code"}}` so that OpenAI client libraries raise their typed errors with the message.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.exceptions import HTTPException

from pictor.serving.settings import is_loopback_host

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


OPENAI_PATHS = frozenset({"/v1/images/generations"})
# OpenAI's error `type` per status (what api.openai.com sends; clients map the status to an
# exception class, e.g. openai.BadRequestError for 400, AuthenticationError for 401)
OPENAI_ERROR_TYPES = {401: "invalid_request_error", 429: "rate_limit_error",
                      500: "server_error", 503: "server_error"}


def openai_error(status: int, message: str, *, param: str | None = None,
                 code: str | None = None) -> dict[str, Any]:
    """The body of an error in OpenAI's shape."""
    kind = OPENAI_ERROR_TYPES.get(status, "invalid_request_error" if status < 500
                                  else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body(path: str, status: int, message: str, *, code: str | None = None
               ) -> dict[str, Any]:
    """An error body for `path`: OpenAI's shape on OPENAI_PATHS, FastAPI's elsewhere."""
    if path in OPENAI_PATHS:
        return openai_error(status, message, code=code)
    return {"detail": message}


def tokens_match(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def send_json(send: Send, status: int, body: dict[str, Any],
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class BearerAuth:
    """401 unless the request carries the bearer token (paths in `open_paths` and under
    `open_prefixes` excepted). With token None every request passes (loopback only: enforced
    by ServeSettings.check)."""

    def __init__(self, app: ASGIApp, token: str | None, open_paths: Iterable[str] = (),
                 open_prefixes: Iterable[str] = ()) -> None:
        self.app, self.token = app, token
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None:
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in self.open_paths or path.startswith(self.open_prefixes):
            return await self.app(scope, receive, send)
        if not tokens_match(bearer_token(_header(scope, b"authorization")), self.token):
            return await send_json(
                send, 401, error_body(path, 401, "missing or wrong bearer token: send the "
                                      "header 'Authorization: Bearer <token>'",
                                      code="invalid_api_key"),
                [(b"www-authenticate", b'Bearer realm="pictor"')])
        return await self.app(scope, receive, send)


def host_name(host_header: str) -> str:
    """The name of a Host header value: "[::1]:8000" -> "::1", "LocalHost.:80" -> "localhost"."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class LoopbackHostOnly:
    """403 unless the Host header names a loopback address (see the module docstring). Used
    only when the server has no token (which ServeSettings.check allows on loopback only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = _header(scope, b"host")
        if host is None or not is_loopback_host(host_name(host)):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await send_json(
                send, 403, {"detail": f"Host {host!r} is not a loopback name: without a token "
                                      "this server answers only requests addressed to "
                                      "localhost, 127.0.0.1 or [::1] (DNS rebinding)"})
        return await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised from receive() while a route reads an over-long body: an HTTPException, so that
    FastAPI's body parsing re-raises it and its exception handler answers 413."""

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(413, f"request body larger than {max_body_bytes} bytes")


class BodySizeLimit:
    """413 for request bodies larger than max_body_bytes (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit()
                                     or int(declared) > self.max_body_bytes):
            return await self._reject(scope, send)
        seen = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        await send_json(send, 413, error_body(
            scope.get("path", ""), 413,
            f"request body larger than {self.max_body_bytes} bytes", code="request_too_large"))
