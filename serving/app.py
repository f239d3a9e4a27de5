"""The ASGI app: plain-JSON /predict, Open Inference Protocol v2 routes, registry following."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.model import InputError, OnnxModel
from serving.registry import ModelCache, ModelRef, RegistryClient, RegistryError
from serving.settings import Settings

log = logging.getLogger("serving")


class ModelHolder:
    """The model being served; replaced by one reference assignment, so requests never see a mix."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: OnnxModel | None = None
        self.cache = ModelCache(settings.cache_dir, settings.model_name)
        self.client = RegistryClient(settings.registry_url) if settings.registry_url else None
        self.swaps = 0
        self.failed_loads = 0
        self.last_poll_ok: float | None = None
        self.last_error: str | None = None

    def load_cached(self) -> None:
        cached = self.cache.load()
        if cached is not None:
            ref, payload = cached
            self.model = OnnxModel(payload, ref.name, ref.version)
            log.info("serving %s v%s from cache", ref.name, ref.version)

    def poll(self) -> None:
        """Follow the alias: fetch, verify and warm a new version off the request path, then swap."""
        if self.client is None:
            return
        try:
            ref = self.client.resolve(self.settings.model_name, self.settings.alias)
            self.last_poll_ok = time.time()
            if self.model is not None and self.model.version == ref.version:
                return
            payload = self.client.download(ref)
            model = OnnxModel(payload, ref.name, ref.version)
            _warm_up(model)
        except RegistryError as exc:
            self._failed(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a bad artifact must never take the server down
            self._failed(f"cannot load {self.settings.model_name}: {exc}")
            return
        self.cache.save(ModelRef(ref.name, ref.version, model.sha256), payload)
        old, self.model = self.model, model
        self.swaps += 1
        log.info("now serving %s v%s (was %s)", ref.name, ref.version, old.version if old else "none")

    def _failed(self, reason: str) -> None:
        self.failed_loads += 1
        self.last_error = reason
        log.warning("registry poll failed, keeping %s: %s",
                    f"v{self.model.version}" if self.model else "no model", reason)


def _warm_up(model: OnnxModel) -> None:
    columns = {f.name: (np.array(["x"], dtype=object) if f.kind == "categorical"
                        else np.zeros(1, np.float32)) for f in model.features}
    model.predict_columns(columns)


def _model(request: Request, name: str | None = None) -> OnnxModel:
    model: OnnxModel | None = request.app.state.holder.model
    if model is None:
        raise HTTPException(503, "no model loaded yet")
    if name is not None and name != model.name:
        raise HTTPException(404, f"model {name!r} is not served here (serving {model.name!r})")
    return model


def _versioned(model: OnnxModel, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers={"X-Model-Version": model.version})


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise InputError("request body is not valid JSON") from exc


async def predict(request: Request) -> Response:
    model = _model(request)
    body = await _json_body(request)
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list):
        raise InputError('expected {"records": [{feature: value, ...}, ...]}')
    probs = model.predict_columns(model.columns_from_records(records))
    return _versioned(model, {
        "model_name": model.name, "model_version": model.version,
        "predictions": [{"probability": float(p), "label": int(p >= model.threshold)} for p in probs],
    })


async def infer(request: Request) -> Response:
    """OIP v2 infer: one input tensor per feature column (BYTES for categoricals, FP32 for numerics)."""
    model = _model(request, request.path_params["name"])
    version = request.path_params.get("version")
    if version is not None and version != model.version:
        raise HTTPException(404, f"version {version} is not loaded (serving {model.version})")
    body = await _json_body(request)
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list):
        raise InputError('expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    by_name = {i.get("name"): i for i in inputs if isinstance(i, dict)}
    columns: dict[str, np.ndarray] = {}
    for f in model.features:
        if f.name not in by_name:
            raise InputError(f"inputs: missing tensor {f.name!r}")
        data = np.asarray(by_name[f.name].get("data"), dtype=object).reshape(-1)
        try:
            columns[f.name] = (data.astype(str).astype(object) if f.kind == "categorical"
                               else np.array([np.nan if v is None else v for v in data], dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise InputError(f"inputs.{f.name}: {exc}") from exc
    if len({len(c) for c in columns.values()}) > 1:
        raise InputError("inputs: all tensors must have the same number of rows")
    probs = model.predict_columns(columns)
    return _versioned(model, {
        "model_name": model.name, "model_version": model.version, "id": body.get("id", ""),
        "outputs": [{"name": "probability", "shape": [len(probs)], "datatype": "FP32",
                     "data": probs.tolist()}],
    })


async def model_metadata(request: Request) -> Response:
    model = _model(request, request.path_params["name"])
    return _versioned(model, {
        "name": model.name, "versions": [model.version], "platform": "onnxruntime",
        "run_id": model.metadata.get("run_id"),
        "inputs": [{"name": f.name, "datatype": "BYTES" if f.kind == "categorical" else "FP32",
                    "shape": [-1]} for f in model.features],
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1]}],
    })


async def model_ready(request: Request) -> Response:
    model = _model(request, request.path_params["name"])
    return _versioned(model, {"name": model.name, "ready": True})


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    holder: ModelHolder = request.app.state.holder
    ok = holder.model is not None
    return JSONResponse({"ready": ok, "model_version": holder.model.version if holder.model else None},
                        status_code=200 if ok else 503)


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": "flights-serving", "version": "1", "extensions": []})


async def _input_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=400)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    holder = ModelHolder(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        holder.load_cached()
        await asyncio.to_thread(holder.poll)

        async def follow() -> None:
            while True:
                await asyncio.sleep(settings.poll_seconds)
                await asyncio.to_thread(holder.poll)

        poller = asyncio.create_task(follow())
        try:
            yield
        finally:
            poller.cancel()

    routes = [
        Route("/predict", predict, methods=["POST"]),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/models/{name}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={InputError: _input_error, HTTPException: _http_error})
    app.state.holder = holder
    return app
