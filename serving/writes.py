"""uvicorn's HTTP protocol with a connection's writes joined and sent once per turn of the event loop.

uvicorn writes a response's head and its body apart, each as soon as the app sends it, so the client
is woken twice per response, and the responses of one runtime call (a dozen requests under load)
leave one by one over the ~0.1 ms their tasks take. When the server is the bottleneck the client
sleeps between those writes, and each wakeup preempts a server process on a shared machine. Here the
writes of a turn wait in a list per connection and go out at the start of the next turn (a few µs
later): one write per response, and a batch's responses together.
Measured with 2 processes and wrk on 2 cores, 1-row requests, two interleaved pairs: 32.4-34.5 k ->
44.6-46.8 k req/s (server CPU 40-42 -> 32-34 µs and wrk's 14-15 -> 9-10 µs per request); the
bench's hello world, which runs this protocol too, 54-60 k -> 73-75 k.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from serving.upgrade import IgnoreUpgradeProtocol

log = logging.getLogger("serving")


class _Turn:
    """The connections of one event loop with writes waiting for the next turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: list[JoinedWrites] = []

    def add(self, conn: JoinedWrites) -> None:
        if not self._waiting:
            self._loop.call_soon(self._flush)
        self._waiting.append(conn)

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for conn in waiting:
            try:
                conn.flush()
            except Exception:  # noqa: BLE001 - one broken connection must not hold back the others' responses
                log.exception("a response write failed")


_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turn] = weakref.WeakKeyDictionary()


class JoinedWrites:
    """A connection's transport as the protocol sees it: writes wait for the end of the turn;
    everything else is the transport's."""

    __slots__ = ("transport", "_turn", "_chunks")

    def __init__(self, transport: asyncio.Transport, turn: _Turn) -> None:
        self.transport = transport
        self._turn = turn
        self._chunks: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._chunks is None:
            self._chunks = [data]
            self._turn.add(self)
        else:
            self._chunks.append(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for data in chunks:
            self.write(data)

    def flush(self) -> None:
        chunks, self._chunks = self._chunks, None
        if chunks and not self.transport.is_closing():  # a client gone meanwhile takes nothing
            self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def close(self) -> None:
        self.flush()  # a response followed by `Connection: close` still leaves first
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()  # the end of the stream comes after what waits
        self.transport.write_eof()

    # What uvicorn calls per request or connection, spelled out: `__getattr__` runs only after a failed
    # lookup, which costs more than the call it forwards.
    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:  # the rest; nothing else writes
        return getattr(self.transport, name)


class HttpProtocol(IgnoreUpgradeProtocol):
    """What the server runs (ours and bench/serve.py's hello world alike): joined writes, upgrade offers
    ignored."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        loop = self.loop
        turn = _turns.get(loop)
        if turn is None:
            turn = _turns[loop] = _Turn(loop)
        super().connection_made(JoinedWrites(transport, turn))  # type: ignore[arg-type]

    def handle_websocket_upgrade(self) -> None:
        # A WebSocket protocol takes over the connection: it gets the transport itself.
        joined = self.transport
        if isinstance(joined, JoinedWrites):
            joined.flush()
            self.transport = joined.transport
        super().handle_websocket_upgrade()
