"""Responses leave in one write per connection and loop turn (serving/writes.py): on real sockets in-process,
then over raw HTTP against the server process (100-continue, pipelining, Connection: close)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from serving_live import CATEGORICAL, NUMERIC, RECORD, serving_process, tiny_onnx

from serving.registry import ModelCache, ModelRef
from serving.writes import JoinedWrites, _Turn

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class CountedWrites:
    """A real transport that also counts the writes made to it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport, self.writes = transport, 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def _run(loop_name: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


async def _connection() -> tuple[CountedWrites, socket.socket]:
    """Our end of a real socket pair as an asyncio transport, and the peer's socket."""
    ours, peer = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    peer.setblocking(False)
    return CountedWrites(transport), peer  # type: ignore[arg-type]


async def _received(peer: socket.socket, n: int) -> bytes:
    loop, data = asyncio.get_running_loop(), b""
    while len(data) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(peer, 1 << 16), 5)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_writes_of_a_turn_leave_in_one_write_per_connection_in_order(loop_name):
    async def scenario() -> None:
        turn = _Turn(asyncio.get_running_loop())
        (t1, p1), (t2, p2) = await _connection(), await _connection()
        one, two = JoinedWrites(t1, turn), JoinedWrites(t2, turn)  # type: ignore[arg-type]
        one.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        two.write(b"second connection")
        one.write(b"ok")
        assert (t1.writes, t2.writes) == (0, 0)  # nothing leaves during the turn
        await asyncio.sleep(0)
        assert (t1.writes, t2.writes) == (1, 1)
        assert await _received(p1, 40) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        assert await _received(p2, 17) == b"second connection"
        one.write(b"next ")  # a later turn starts a new write
        one.writelines([b"tu", b"rn"])
        await asyncio.sleep(0)
        assert t1.writes == 2 and await _received(p1, 9) == b"next turn"
        one.write(b"the end")
        one.write_eof()  # after what waits
        assert await _received(p1, 1 << 10) == b"the end"
        for t, p in ((t1, p1), (t2, p2)):
            t.close()
            p.close()

    _run(loop_name, scenario)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_close_sends_what_waits_first_and_a_closed_connection_holds_back_no_other(loop_name):
    async def scenario() -> None:
        turn = _Turn(asyncio.get_running_loop())
        (t1, p1), (t2, p2), (t3, p3) = await _connection(), await _connection(), await _connection()
        closing, gone, other = (JoinedWrites(t, turn) for t in (t1, t2, t3))  # type: ignore[arg-type]
        closing.write(b"last response")
        closing.close()  # Connection: close: the response first, then the end of the stream
        assert await _received(p1, 1 << 10) == b"last response"
        gone.write(b"for a client that left")
        other.write(b"still delivered")
        t2.close()  # closed before the turn ends: its bytes are dropped, not written to a closing transport
        await asyncio.sleep(0)
        assert t2.writes == 0
        assert await _received(p3, 15) == b"still delivered"
        t3.close()
        for p in (p1, p2, p3):
            p.close()

    _run(loop_name, scenario)


@pytest.mark.slow
def test_continue_pipelining_and_close_over_raw_http(tmp_path: Path):
    ModelCache(tmp_path / "cache", "flights_delay").save(ModelRef("flights_delay", "4", None),
                                                         tiny_onnx(NUMERIC, CATEGORICAL))
    body = json.dumps({"records": [RECORD]}).encode()
    request = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n" % len(body))
    with serving_process(tmp_path) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            # Expect: 100-continue: the interim answer must leave while the request waits for its body.
            s.sendall(request + b"Expect: 100-continue\r\n\r\n")
            reader = _Responses(s)
            assert reader.next()[0] == 100
            s.sendall(body)
            status, headers, answer = reader.next()
            assert status == 200 and headers[b"x-model-version"] == b"4"
            first = json.loads(answer)["predictions"][0]["probability"]
            # Two requests in one packet: two whole answers, in order.
            s.sendall(request + b"\r\n" + body + b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert json.loads(reader.next()[2])["predictions"][0]["probability"] == first
            assert json.loads(reader.next()[2]) == {"ready": True, "model_version": "4"}
            # Connection: close: the whole answer, then the end of the stream.
            s.sendall(request + b"Connection: close\r\n\r\n" + body)
            status, headers, answer = reader.next()
            assert status == 200 and json.loads(answer)["predictions"][0]["probability"] == first
            assert reader.rest() == b""


class _Responses:
    """HTTP/1.1 responses with Content-Length, read one by one from a socket."""

    def __init__(self, s: socket.socket) -> None:
        self.s, self.buf = s, b""

    def next(self) -> tuple[int, dict[bytes, bytes], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.split(b"\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines)}
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buf) < length:
            self._more()
        answer, self.buf = self.buf[:length], self.buf[length:]
        return int(status_line.split(b" ")[1]), headers, answer

    def rest(self) -> bytes:
        """What follows until the server closes the connection."""
        while chunk := self.s.recv(1 << 16):
            self.buf += chunk
        return self.buf

    def _more(self) -> None:
        chunk = self.s.recv(1 << 16)
        assert chunk, "the server closed the connection mid-response"
        self.buf += chunk
