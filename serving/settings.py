"""Serving settings from the environment, read once at start; a bad value stops the start with its name."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
MiB = 1 << 20
# Set by `python -m serving` for its server processes (serving/worker.py): the ASGI app to serve
# ("module:attribute") and whether the attribute is a factory to call.
APP_VAR, FACTORY_VAR = "SERVING_ASGI_APP", "SERVING_ASGI_FACTORY"


@dataclass(frozen=True)
class Settings:
    model_name: str
    registry_url: str | None  # MLflow server base URL; None serves only the on-disk cache
    alias: str
    poll_seconds: float
    cache_dir: Path
    host: str
    port: int
    auth_token: str | None = None  # bearer token; None: no auth
    max_body_bytes: int = 8 * MiB  # larger request bodies get 413
    prediction_log_dir: Path | None = None  # None: no prediction log
    prediction_log_sample: float = 1.0  # share of requests logged
    prediction_log_flush_seconds: float = 30.0
    max_batch_rows: int = 4096  # rows per onnxruntime call when requests are merged
    startup_wait_seconds: float = 10.0  # without a cached model, wait this long for the registry before listening
    access_log: bool = False
    workers: int = 1  # server processes sharing the port (each loads the model and follows the registry)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        state = Path(env.get("STATE_DIR", Path(__file__).resolve().parent.parent / ".state"))
        log_dir = env.get("SERVING_PREDICTION_LOG_DIR", str(state / "serving" / "predictions"))
        return cls(
            model_name=env.get("MODEL_NAME", "flights_delay"),
            registry_url=_url(env.get("MLFLOW_SERVER_URL", "http://127.0.0.1:5000")),
            alias=env.get("MODEL_ALIAS", "champion"),
            poll_seconds=_get(env, "SERVING_POLL_SECONDS", "10", float, lambda v: v > 0, "seconds > 0"),
            cache_dir=Path(env.get("SERVING_CACHE_DIR", state / "serving" / "cache")),
            host=env.get("SERVING_HOST", "127.0.0.1"),
            port=_get(env, "SERVING_PORT", "8000", int, lambda v: 0 <= v < 65536, "a port, 0 to 65535"),
            auth_token=_token(env),
            max_body_bytes=_get(env, "SERVING_MAX_BODY_BYTES", str(8 * MiB), int, lambda v: v > 0,
                                "a whole number of bytes > 0"),
            prediction_log_dir=Path(log_dir) if log_dir else None,
            prediction_log_sample=_get(env, "SERVING_PREDICTION_LOG_SAMPLE", "1", float, lambda v: 0 <= v <= 1,
                                       "a share from 0 to 1"),
            prediction_log_flush_seconds=_get(env, "SERVING_PREDICTION_LOG_FLUSH_SECONDS", "30", float,
                                              lambda v: v > 0, "seconds > 0"),
            max_batch_rows=_get(env, "SERVING_MAX_BATCH_ROWS", "4096", int, lambda v: v > 0, "a whole number > 0"),
            startup_wait_seconds=_get(env, "SERVING_STARTUP_WAIT_SECONDS", "10", float, lambda v: v >= 0,
                                      "seconds >= 0"),
            access_log=_get(env, "SERVING_ACCESS_LOG", "0", _flag, lambda v: True, "1/0, true/false, yes/no or on/off"),
            workers=_get(env, "SERVING_WORKERS", "1", int, lambda v: 1 <= v <= 64, "a whole number from 1 to 64"),
        )


def _get(env: Mapping[str, str], name: str, default: str, parse: Callable[[str], T],
         valid: Callable[[T], bool], expected: str) -> T:
    raw = env.get(name, default)
    try:
        value = parse(raw)
        ok = valid(value)
    except ValueError:  # not even of the right type
        ok = False
    if not ok:
        raise ValueError(f"{name}={raw!r}: expected {expected}")
    return value


def _flag(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


def _url(raw: str) -> str | None:
    """MLFLOW_SERVER_URL: an http(s) base URL, or empty for no registry. A typo stops the start here,
    rather than leaving the server on its cached model with a warning per poll."""
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"MLFLOW_SERVER_URL={raw!r}: expected an http:// or https:// URL "
                         "(empty: serve the cache only)")
    return raw


def _token(env: Mapping[str, str]) -> str | None:
    """SERVING_AUTH_TOKEN, or the content of SERVING_AUTH_TOKEN_FILE (a mounted secret). A token file
    that is missing, unreadable or empty stops the start: auth must not go off because a secret did not
    mount."""
    path = env.get("SERVING_AUTH_TOKEN_FILE")
    if not path:
        return env.get("SERVING_AUTH_TOKEN", "") or None
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"SERVING_AUTH_TOKEN_FILE={path!r}: cannot read the token ({exc})") from None
    if not token:
        raise ValueError(f"SERVING_AUTH_TOKEN_FILE={path!r}: the file is empty; refusing to serve without auth")
    return token
