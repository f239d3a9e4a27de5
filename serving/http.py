"""The HTTP layer on raw ASGI: routes, bounded body reads, replies, and errors that carry their status code.

No web framework on purpose: the benchmark's ceiling is a raw ASGI callable on the same server, and
a request here costs one dict lookup, one body read and one `send` pair on top of it. Headers stay the
server's list (a dict per request cost more than the few lookups a request makes).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

JSON = b"application/json"
Scope = MutableMapping[str, Any]
Headers = list[tuple[bytes, bytes]]  # as the server hands them over: lower-case names, in arrival order
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


def header(headers: Headers, name: bytes) -> bytes | None:
    """The value of header `name` (lower-case), the last one when it is repeated; None when absent."""
    value = None
    for key, v in headers:
        if key == name:
            value = v
    return value


# Request and Reply are made per request: msgspec Structs, whose __init__ is C (~40 ns against a
# dataclass's ~190 ns generated Python __init__).
class Request(msgspec.Struct):
    method: str
    path: str
    params: dict[str, str]  # shared between requests: read, never change
    headers: Headers
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        return header(self.headers, name)


class Reply(msgspec.Struct):
    body: bytes
    status: int = 200
    content_type: bytes = JSON
    model_version: str | None = None  # for X-Model-Version; None: the version being served
    headers: Sequence[tuple[bytes, bytes]] = ()

    def messages(self, model_version: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The ASGI messages that send this reply, X-Model-Version set from `model_version` when not None."""
        headers = [(b"content-type", self.content_type), (b"content-length", b"%d" % len(self.body))]
        if self.headers:
            headers.extend(self.headers)
        if model_version is not None:
            headers.append((b"x-model-version", model_version.encode()))
        return ({"type": "http.response.start", "status": self.status, "headers": headers},
                {"type": "http.response.body", "body": self.body})


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
        # Made once, not per request: (route, no params).
        self.exact: dict[str, tuple[Route, dict[str, str]]] = {r.path: (r, {}) for r in routes if "{" not in r.path}
        self.templated = [(re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", r.path) + "$"), r)
                          for r in routes if "{" in r.path]

    def match(self, path: str) -> tuple[Route, dict[str, str]] | None:
        found = self.exact.get(path)
        if found is not None:
            return found
        for pattern, route in self.templated:
            m = pattern.match(path)
            if m:
                return route, m.groupdict()
        return None


def whole_body(message: MutableMapping[str, Any], limit: int) -> bytes | None:
    """The body, when the request's first message holds all of it within `limit` (the common case: no
    coroutine, no header lookup); None otherwise, and `read_body` takes over."""
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")
        if len(body) <= limit:
            return body
    return None


async def read_body(receive: Receive, headers: Headers, limit: int, message: MutableMapping[str, Any]) -> bytes:
    """The whole request body from its first `message` on, refused with 413 as soon as it is known to exceed
    `limit` (by its Content-Length, before the rest is read)."""
    declared = header(headers, b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length: not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body: {int(declared)} bytes is over the limit of {limit} bytes "
                                  "(SERVING_MAX_BODY_BYTES)")
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
