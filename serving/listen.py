"""One listening socket per server process, bound with SO_REUSEPORT, for SERVING_WORKERS > 1.

uvicorn's worker supervisor gives every process the same listening socket, and the process that wakes
first accepts most of a burst of connections: in the benchmark, 26 of wrk's 32 keep-alive connections
went to one of two processes, which queued them while the other idled. With a socket of its own per
process, bound to the same port with SO_REUSEPORT, the kernel spreads new connections over the
processes by their address hash.
"""

from __future__ import annotations

import socket
from typing import Any

from serving.settings import Settings


class OwnListener:
    """Stands in for the listening socket handed to uvicorn's supervisor, which pickles it to each worker
    process it starts (or restarts): unpickled there, it is a new socket bound with SO_REUSEPORT."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return bind_reuseport, (self.host, self.port)


def bind_reuseport(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, not yet listening (the server listens)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def check_port(settings: Settings) -> None:
    """Refuse, once and before any worker starts, a port these processes cannot have to themselves:
    any port (0: each process would get another), one another program is bound to, or one a server
    already answers on (another server with SO_REUSEPORT would silently share it)."""
    if settings.port == 0:
        raise ValueError("SERVING_PORT=0 (any free port) needs SERVING_WORKERS=1: each process would get another port")
    bind_reuseport(settings.host, settings.port).close()
    if _answers(settings.host, settings.port):
        raise ValueError(f"SERVING_PORT={settings.port}: a server already listens on {settings.host}:{settings.port}")


def _answers(host: str, port: int) -> bool:
    target = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - a probe
    try:
        with socket.create_connection((target, port), timeout=1):
            return True
    except OSError:
        return False
