"""`python -m serving`: run the model server with uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import gc
import logging
import sys
from typing import Any

import uvicorn

from serving.app import create_app
from serving.settings import Settings
from serving.upgrade import IgnoreUpgradeProtocol


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings; bench/serve.py runs its hello-world ceiling with the same ones."""
    return {"host": settings.host, "port": settings.port, "log_level": "info", "access_log": settings.access_log,
            "loop": "auto", "http": IgnoreUpgradeProtocol, "lifespan": "on", "timeout_graceful_shutdown": 30}


def run(app: Any, settings: Settings) -> None:
    """Serve `app` until SIGTERM/SIGINT (bench/serve.py starts its hello-world ceiling through here too)."""
    # The imported libraries live until exit: out of every garbage collection, which then only walks
    # the objects requests create (a full collection over numpy/onnxruntime's objects costs milliseconds).
    gc.collect()
    gc.freeze()
    # The runtime and prediction-log threads hand the interpreter back to the event loop within 0.5 ms
    # (default 5 ms: a request can wait that long behind a log slice).
    sys.setswitchinterval(0.0005)
    uvicorn.run(app, **server_options(settings))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
