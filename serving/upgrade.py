"""uvicorn's httptools protocol, but an HTTP/2 upgrade offer is ignored (RFC 9110 §7.8) instead of losing the body.

Every stock Java `HttpClient` offers `Connection: Upgrade, HTTP2-Settings` / `Upgrade: h2c` on cleartext
URLs. httptools stops parsing at the end of such a request's headers and uvicorn then hands the app an
empty body (open defect Kludex/uvicorn#2722). Here the request is answered as plain HTTP/1.1: the
`Content-Length` bytes after the headers become the body, and a fresh parser takes the rest of the
connection. A chunked body with an upgrade offer (rare) gets a clear 400. WebSocket upgrades keep
uvicorn's handling; requests without an upgrade take the unchanged fast path.
"""

from __future__ import annotations

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class IgnoreUpgradeProtocol(HttpToolsProtocol):
    _upgrade_body_left = 0  # body bytes still to read for a request whose upgrade offer was ignored

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade() and not self._should_upgrade():
            self._upgrade_body_left = self._content_length()
            if self._upgrade_body_left > 0:
                return  # not complete: the body follows the headers; data_received collects it
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._upgrade_body_left:
            self._collect_body(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade as exc:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
                return
            if any(n == b"transfer-encoding" for n, _ in self.headers):
                self.send_400_response("Chunked body with an Upgrade offer: send Content-Length, or no Upgrade.")
                return
            self.parser = httptools.HttpRequestParser(self)  # the paused parser would refuse the next request
            rest = data[exc.args[0]:] if exc.args else b""
            if rest:
                self.data_received(rest)

    def _collect_body(self, data: bytes) -> None:
        take, rest = data[:self._upgrade_body_left], data[self._upgrade_body_left:]
        self._upgrade_body_left -= len(take)
        self.on_body(take)
        if self._upgrade_body_left == 0:
            super().on_message_complete()
            if rest:
                self.data_received(rest)

    def _content_length(self) -> int:
        for name, value in self.headers:
            if name == b"content-length" and value.strip().isdigit():
                return int(value)
        return 0
