"""`python -m serving`: run the model server with uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from serving.listen import OwnListener, check_port
from serving.metrics import SHARE_VAR
from serving.settings import APP_VAR, FACTORY_VAR, Settings
from serving.writes import HttpProtocol


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings; bench/serve.py runs its hello-world ceiling with the same ones."""
    return {"host": settings.host, "port": settings.port, "log_level": "info", "access_log": settings.access_log,
            "loop": "auto", "http": HttpProtocol, "lifespan": "on", "timeout_graceful_shutdown": 30,
            "workers": settings.workers}


def run(target: str, settings: Settings, factory: bool = True) -> None:
    """Serve the ASGI app `target` ("module:attribute"; with `factory`, called to make it) until
    SIGTERM/SIGINT, in `settings.workers` processes (bench/serve.py starts its ceiling through here too).

    Each process imports serving.worker, which makes the app there: never import it before this.
    """
    if settings.workers > 1:
        check_port(settings)
    os.environ[APP_VAR], os.environ[FACTORY_VAR] = target, "1" if factory else "0"
    if settings.workers == 1:
        uvicorn.run("serving.worker:app", **server_options(settings))
        return
    # The workers' metrics meet here: each scrape answers for all of them (serving/metrics.py).
    share = tempfile.mkdtemp(prefix="serving-metrics-")
    os.environ[SHARE_VAR] = share
    try:
        config = uvicorn.Config("serving.worker:app", **server_options(settings))
        # Each process listens on a socket of its own (serving/listen.py): even spread of connections.
        Multiprocess(config, sockets=[OwnListener(settings.host, settings.port)]).run()  # type: ignore[list-item]
    finally:
        shutil.rmtree(share, ignore_errors=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run("serving.app:create_app", Settings.from_env())


if __name__ == "__main__":
    main()
