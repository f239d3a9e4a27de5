"""The HTTP layer on raw ASGI: routes, bounded body reads, replies, and errors that carry their status code.

No web framework on purpose: the benchmark's ceiling is a raw ASGI callable on the same server, and
a request here costs one dict lookup, one body read and one `send` pair on top of it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

JSON = b"application/json"
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
encode = msgspec.json.Encoder().encode


class HTTPError(Exception):
    """An answer other than 2xx: the status code travels with the message."""

    status = 500

    def __init__(self, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or []


class BadRequest(HTTPError):
    status = 400


class Unauthorized(HTTPError):
    status = 401


class NotFound(HTTPError):
    status = 404


class MethodNotAllowed(HTTPError):
    status = 405


class PayloadTooLarge(HTTPError):
    status = 413


class UnsupportedMediaType(HTTPError):
    status = 415


class NotReady(HTTPError):
    status = 503


class ClientGone(Exception):
    """The client disconnected before sending its whole request."""


@dataclass(slots=True)
class Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[bytes, bytes]
    body: bytes = b""


@dataclass(slots=True)
class Reply:
    body: bytes
    status: int = 200
    content_type: bytes = JSON
    model_version: str | None = None  # for X-Model-Version; None: the version being served
    headers: Sequence[tuple[bytes, bytes]] = ()


def json_reply(doc: Any, status: int = 200, model_version: str | None = None) -> Reply:
    return Reply(encode(doc), status, model_version=model_version)


Handler = Callable[[Request], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    path: str  # template: /v2/models/{name}; also the metrics label
    handler: Handler
    methods: tuple[str, ...] = ("GET",)
    public: bool = False  # answered without the bearer token (liveness only)
    reads_body: bool = False

    def allows(self, method: str) -> bool:
        """Whether `method` is answered here: HEAD wherever GET is (the server sends the headers only)."""
        return method in self.methods or (method == "HEAD" and "GET" in self.methods)

    @property
    def allowed(self) -> str:
        """The Allow header's value."""
        return ", ".join((*self.methods, "HEAD") if "GET" in self.methods else self.methods)


class Router:
    """Exact paths by dict lookup; templated ones by regex, in list order."""

    def __init__(self, routes: list[Route]) -> None:
        self.exact = {r.path: r for r in routes if "{" not in r.path}
        self.templated = [(re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", r.path) + "$"), r)
                          for r in routes if "{" in r.path]

    def match(self, path: str) -> tuple[Route, dict[str, str]] | None:
        route = self.exact.get(path)
        if route is not None:
            return route, {}
        for pattern, route in self.templated:
            m = pattern.match(path)
            if m:
                return route, m.groupdict()
        return None


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The whole request body, refused with 413 as soon as it is known to exceed `limit`."""
    declared = headers.get(b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length: not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body: {int(declared)} bytes is over the limit of {limit} bytes "
                                  "(SERVING_MAX_BODY_BYTES)")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if len(body) > limit:  # no Content-Length (chunked): the server may hand the whole body over at once
        raise PayloadTooLarge(f"body: over the limit of {limit} bytes (SERVING_MAX_BODY_BYTES)")
    if not message.get("more_body", False):
        return body
    chunks, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body: over the limit of {limit} bytes (SERVING_MAX_BODY_BYTES)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_reply(send: Send, reply: Reply, model_version: str | None) -> None:
    headers = [(b"content-type", reply.content_type), (b"content-length", b"%d" % len(reply.body))]
    if reply.headers:
        headers.extend(reply.headers)
    if model_version is not None:
        headers.append((b"x-model-version", model_version.encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
