"""Serving settings from the environment, read once at start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    model_name: str
    registry_url: str | None  # MLflow server base URL; None serves only the on-disk cache
    alias: str
    poll_seconds: float
    cache_dir: Path
    host: str
    port: int

    @classmethod
    def from_env(cls) -> Settings:
        state = Path(os.environ.get("STATE_DIR", Path(__file__).resolve().parent.parent / ".state"))
        return cls(
            model_name=os.environ.get("MODEL_NAME", "flights_delay"),
            registry_url=os.environ.get("MLFLOW_SERVER_URL", "http://127.0.0.1:5000") or None,
            alias=os.environ.get("MODEL_ALIAS", "champion"),
            poll_seconds=float(os.environ.get("SERVING_POLL_SECONDS", "10")),
            cache_dir=Path(os.environ.get("SERVING_CACHE_DIR", state / "serving" / "cache")),
            host=os.environ.get("SERVING_HOST", "127.0.0.1"),
            port=int(os.environ.get("SERVING_PORT", "8000")),
        )
