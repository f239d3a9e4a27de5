"""The ASGI app: plain-JSON /predict and Open Inference Protocol v2 routes over a registry-following predictor.

A routes list, a lifespan that owns the resources (registry poller, runtime thread, prediction log),
thin handlers over the current `Predictor`, and one place (`_dispatch`) that turns errors into
status codes: 4xx with {"error": ...} for the caller's mistakes, 500 with no details otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from serving.follower import Follower
from serving.http import (
    ClientGone,
    Headers,
    HTTPError,
    MethodNotAllowed,
    NotFound,
    NotReady,
    Receive,
    Reply,
    Request,
    Route,
    Router,
    Scope,
    Send,
    Unauthorized,
    UnsupportedMediaType,
    encode,
    header,
    json_reply,
    read_body,
    whole_body,
)
from serving.metrics import CONTENT_TYPE, SHARE_VAR, Metrics
from serving.model import InputError, OnnxModel
from serving.openapi import document
from serving.predictor import LogTag, Predictor
from serving.predlog import PredictionLog
from serving.protocol import NUMERIC, OUTPUTS
from serving.settings import Settings

log = logging.getLogger("serving")
SERVER_NAME, SERVER_VERSION = "flights-mlops-serving", "2"
_LIVE = encode({"live": True})


class ServingApp:
    """The ASGI callable. `follower.predictor` is the model being served; a swap replaces it in one step."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.runtime = ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")  # one call at a time, off the loop
        # Set when this is one of several server processes: where their metrics meet, and the lock of
        # the one process that polls the registry for all of them.
        self._share = Path(os.environ[SHARE_VAR]) if os.environ.get(SHARE_VAR) else None
        self.follower = Follower(settings, self._predictor, self.metrics.model,
                                 self._share / "registry.lock" if self._share else None)
        self.predlog = (PredictionLog(settings.prediction_log_dir, settings.prediction_log_sample,
                                      settings.prediction_log_flush_seconds, self.metrics)
                        if settings.prediction_log_dir and settings.prediction_log_sample > 0 else None)
        self._log_all = self.predlog is not None and settings.prediction_log_sample >= 1.0  # no draw per request
        self.router = Router(self.routes())
        self._token = f"Bearer {settings.auth_token}".encode() if settings.auth_token else None
        self._poller: asyncio.Task[None] | None = None
        self._sharer: asyncio.Task[None] | None = None

    def routes(self) -> list[Route]:
        model_routes = [
            Route("/v2/models/{name}", self.model_metadata),
            Route("/v2/models/{name}/ready", self.model_ready),
            Route("/v2/models/{name}/infer", self.infer, ("POST",), reads_body=True),
        ]
        versioned = [Route(r.path.replace("{name}", "{name}/versions/{version}"), r.handler, r.methods,
                           reads_body=r.reads_body) for r in model_routes]
        return [
            Route("/predict", self.predict, ("POST",), reads_body=True),
            Route("/v2/health/live", self.live, public=True),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            *model_routes, *versioned,
            Route("/metrics", self.prometheus),
            Route("/openapi.json", self.openapi),
        ]

    # --- handlers ---------------------------------------------------------------------------------------

    async def predict(self, req: Request) -> Reply:
        p = self._serving()
        rows, request_id = p.protocol.records(req.body)
        probs = await p.predict(rows, self._log_tag(request_id))
        return Reply(p.protocol.predict_response(probs), model_version=p.model.version)

    async def infer(self, req: Request) -> Reply:
        p = self._serving(req.params)
        encoding = req.header(b"content-encoding")
        if encoding is not None and encoding != b"identity":
            raise UnsupportedMediaType(f"Content-Encoding {encoding.decode(errors='replace')} is not supported; "
                                       "send the body uncompressed")
        header_length = req.header(b"inference-header-content-length")
        if header_length is not None and not header_length.isdigit():
            raise InputError("Inference-Header-Content-Length: not a number")
        request = p.protocol.infer(req.body, int(header_length) if header_length is not None else None)
        probs = await p.predict(request.rows, self._log_tag(request.id))
        body, json_length = p.protocol.infer_response(request, probs)
        if json_length is None:
            return Reply(body, model_version=p.model.version)
        return Reply(body, content_type=b"application/octet-stream", model_version=p.model.version,
                     headers=[(b"inference-header-content-length", b"%d" % json_length)])

    async def live(self, req: Request) -> Reply:
        return Reply(_LIVE)

    async def ready(self, req: Request) -> Reply:
        p = self.follower.predictor
        version = p.model.version if p else None
        return json_reply({"ready": p is not None, "model_version": version}, 200 if p else 503, version)

    async def server_metadata(self, req: Request) -> Reply:
        return json_reply({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, req: Request) -> Reply:
        m = self._serving(req.params).model
        return json_reply(_metadata(m), model_version=m.version)

    async def model_ready(self, req: Request) -> Reply:
        m = self._serving(req.params).model
        return json_reply({"name": m.name, "ready": True, "model_version": m.version}, model_version=m.version)

    async def prometheus(self, req: Request) -> Reply:
        if self._share is not None:
            return Reply(self.metrics.render_shared(self._share), content_type=CONTENT_TYPE)
        return Reply(self.metrics.render(), content_type=CONTENT_TYPE)

    async def openapi(self, req: Request) -> Reply:
        p = self.follower.predictor
        return json_reply(document(p.model if p else None, self._token is not None, SERVER_VERSION))

    # --- plumbing ---------------------------------------------------------------------------------------

    def _predictor(self, model: OnnxModel) -> Predictor:
        return Predictor(model, self.runtime, self.settings.max_batch_rows, self.metrics.batch,
                         self.predlog)

    def _serving(self, params: dict[str, str] | None = None) -> Predictor:
        """The current predictor, checked against the model name and version in the path."""
        p = self.follower.predictor
        if p is None:
            raise NotReady("no model loaded yet")
        if params:
            if params["name"] != p.model.name:
                raise NotFound(f"model {params['name']!r} is not served here (serving {p.model.name!r})")
            if params.get("version", p.model.version) != p.model.version:
                raise NotFound(f"version {params['version']} of {p.model.name} is not loaded "
                               f"(serving version {p.model.version})")
        return p

    def _log_tag(self, request_id: str | None) -> LogTag | None:
        """(time, id) when this request goes to the prediction log (sampled), else None."""
        if self._log_all or (self.predlog is not None and self.predlog.sampled()):
            return time.time(), request_id
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        found = self.router.match(path)
        label = found[0].path if found else "unmatched"
        headers = scope["headers"]
        try:
            if self._token is not None and not (found and found[0].public):
                self._authorize(headers)
            if found is None:
                raise NotFound(f"no route {path}")
            route, params = found
            if not route.allows(scope["method"]):
                raise MethodNotAllowed(f"{scope['method']} {path}: use {route.allowed}",
                                       [(b"allow", route.allowed.encode())])
            body = b""
            if route.reads_body:  # the body's first message usually holds all of it: no read_body coroutine
                first, limit = await receive(), self.settings.max_body_bytes
                whole = whole_body(first, limit)
                body = whole if whole is not None else await read_body(receive, headers, limit, first)
            reply = await route.handler(Request(scope["method"], path, params, headers, body))
        except InputError as exc:
            reply = json_reply({"error": str(exc)}, 400)
        except HTTPError as exc:
            reply = json_reply({"error": str(exc)}, exc.status)
            reply.headers = exc.headers
        except ClientGone:
            self.metrics.observe(label, 499, time.perf_counter() - start)
            return
        except Exception:  # noqa: BLE001 - the caller gets no stack trace; the log does
            log.exception("%s %s failed", scope["method"], path)
            reply = json_reply({"error": "internal error (logged on the server)"}, 500)
        version = reply.model_version
        if version is None and self.follower.predictor is not None:
            version = self.follower.predictor.model.version
        start_message, body_message = reply.messages(version)
        await send(start_message)
        await send(body_message)
        self.metrics.observe(label, reply.status, time.perf_counter() - start)

    def _authorize(self, headers: Headers) -> None:
        given = header(headers, b"authorization") or b""
        if not (self._token and hmac.compare_digest(given, self._token)):
            raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)",
                               [(b"www-authenticate", b'Bearer realm="serving"')])

    # --- lifespan ---------------------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            await self.startup()
        except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
            log.exception("startup failed")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await self.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    async def startup(self) -> None:
        """Serve from the disk cache at once when there is one; follow the registry in the background."""
        await asyncio.to_thread(self.follower.load_cached)
        if self.predlog is not None:
            # Complete the log files an earlier run left open (killed, out of memory) before serving.
            try:
                await asyncio.to_thread(self.predlog.recover_orphans)
            except Exception:  # noqa: BLE001 - serving must not depend on an old file's state
                log.exception("prediction log: the scan for files left open failed")
            self.predlog.start()
        first_poll = asyncio.Event()
        self._poller = asyncio.create_task(self._follow(first_poll))
        if self._share is not None:
            self._sharer = asyncio.create_task(self._share_metrics(self._share))
        if self.follower.predictor is None and self.follower.client is not None:
            # Nothing cached: give the registry (or the process that polls it) a moment, so a first
            # start is ready when it listens.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first_poll.wait(), self.settings.startup_wait_seconds)

    async def shutdown(self) -> None:
        for task in (self._poller, self._sharer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.predlog is not None:
            await self.predlog.close()
        self.runtime.shutdown(wait=False)

    async def _follow(self, first_poll: asyncio.Event) -> None:
        """Poll (the registry, or what the process that polls it hands over) for good. `first_poll` is set
        after the first registry poll, or once a process following the polling one has a model."""
        while True:
            try:
                await asyncio.to_thread(self.follower.poll)
            except Exception:  # noqa: BLE001 - the poller must outlive any surprise
                log.exception("registry poll crashed")
            if self.follower.predictor is not None or self.follower.polls_registry:
                first_poll.set()
            await asyncio.sleep(self.follower.next_poll_in())

    async def _share_metrics(self, folder: Path) -> None:
        """Every second, this process's counters for the scrapes the other processes answer."""
        while True:
            try:
                self.metrics.share(folder)
            except OSError as exc:
                log.warning("could not share metrics in %s: %s", folder, exc)
            await asyncio.sleep(1.0)


def _metadata(m: OnnxModel) -> dict[str, Any]:
    inputs = [{"name": f.name, "datatype": "BYTES" if f.kind == "categorical" else "FP32", "shape": [-1]}
              for f in m.features]
    return {
        "name": m.name, "versions": [m.version], "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": [{"name": name, "datatype": dtype, "shape": [-1]} for name, dtype in OUTPUTS.items()],
        "run_id": m.metadata.get("run_id"),
        "parameters": {
            "threshold": m.threshold, "sha256": m.sha256, "numeric_datatypes": sorted(NUMERIC),
            "row_major_input": {"name": "input", "datatype": "BYTES", "shape": [-1, len(m.features)],
                                "columns": [f.name for f in m.features]},
        },
    }


def create_app(settings: Settings | None = None) -> ServingApp:
    return ServingApp(settings or Settings.from_env())
