"""The ASGI app of one server process: what SERVING_ASGI_APP names, in an interpreter tuned for serving.

uvicorn imports `serving.worker:app` in each of its worker processes (SERVING_WORKERS > 1) or in this
one, so every process gets the same tuning; `bench/serve.py` serves its hello-world ceiling through
here too, with the same settings.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from typing import Any

from serving.settings import APP_VAR, FACTORY_VAR


def _load(target: str, factory: bool) -> Any:
    module, _, attribute = target.partition(":")
    obj = getattr(importlib.import_module(module), attribute)
    return obj() if factory else obj


def _tune() -> None:
    # The imported libraries live until exit: out of every garbage collection, which then only walks
    # the objects requests create (a full collection over numpy/onnxruntime's objects costs milliseconds).
    gc.collect()
    gc.freeze()
    # The runtime thread (calls over INLINE_ROWS rows) hands the interpreter back to the event loop within 0.5 ms
    # (default 5 ms: a request can wait that long behind the Python part of a call).
    sys.setswitchinterval(0.0005)


app = _load(os.environ.get(APP_VAR, "serving.app:create_app"), os.environ.get(FACTORY_VAR, "1") == "1")
_tune()
