"""Following the registry alias: start from the disk cache, poll, verify, load and warm off the request path, swap.

A swap is one reference assignment: requests already holding the old predictor finish on it. A
version that fails to download-verify or load is reported (metrics, log) once per version and the
old one keeps serving; an unreachable registry only counts a poll error.

With several server processes (SERVING_WORKERS), one of them polls the registry: the one holding the
lock file in the folder the processes share. It puts each version it loaded in that folder too (as well
as in the disk cache), and the others follow it there (a small file read per second), so the registry
sees one server, not one per process (each alias lookup costs the MLflow server ~30 ms of CPU). When
the polling process exits, the lock is free and the next process to look takes it over.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from serving.metrics import ModelState
from serving.model import OnnxModel
from serving.predictor import Predictor
from serving.registry import ArtifactMissing, ChecksumError, ModelCache, ModelRef, RegistryClient, RegistryError
from serving.settings import Settings

log = logging.getLogger("serving.follower")


class Follower:
    def __init__(self, settings: Settings, make_predictor: Callable[[OnnxModel], Predictor],
                 state: ModelState, lock: Path | None = None) -> None:
        """`lock`: the lock file of a server's processes (only its holder polls the registry); None: poll."""
        self.settings = settings
        self.predictor: Predictor | None = None
        self.cache = ModelCache(settings.cache_dir, settings.model_name)
        self.client = RegistryClient(settings.registry_url) if settings.registry_url else None
        self.state = state
        self.state.name = settings.model_name
        self.last_error: str | None = None
        self._make = make_predictor
        self._failed: tuple[str, str | None] | None = None  # (version, sha256) that did not load
        self._registry_down = False
        self._lock = lock
        self._lock_fd: int | None = None  # held for the process's life once taken
        # Where the polling process hands versions to the others: beside the lock, always writable
        # (the disk cache may not be, and must not be what keeps the processes on one version).
        self._handover = ModelCache(lock.parent, settings.model_name) if lock else None

    def load_cached(self) -> bool:
        """Serve the last good model from disk, if there is one: the registry may be away."""
        cached = self.cache.load()
        if cached is None:
            return False
        ref, payload = cached
        try:
            predictor = self._prepare(ref, payload)
        except Exception as exc:  # noqa: BLE001 - a bad cache must not stop the start
            log.warning("the cached %s v%s does not load: %s", ref.name, ref.version, exc)
            return False
        self._swap(predictor, "the disk cache")
        return True

    @property
    def polls_registry(self) -> bool:
        """Whether this process polls the registry: the only one, or the holder of the lock."""
        return self.client is not None and (self._lock is None or self._lock_fd is not None)

    def next_poll_in(self) -> float:
        """Seconds to the next `poll`: the registry interval, or (following the polling process) at most a
        second, and a quarter of one while there is no model yet."""
        if self.client is None or self.polls_registry:
            return self.settings.poll_seconds
        return min(self.settings.poll_seconds, 0.25 if self.predictor is None else 1.0)

    def _claim_lock(self) -> None:
        """Take the lock when it is free (its holder exited): this process polls the registry from now on."""
        assert self._lock is not None
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return
        self._lock_fd = fd
        log.info("this process polls the registry for the server's processes")

    def poll(self) -> None:
        """One look at the alias (or, where another process polls the registry, at what it handed over);
        load and swap when it names another version."""
        if self.client is None:
            return
        if self._lock is not None and self._lock_fd is None:
            self._claim_lock()
        self.state.polls_registry = int(self.polls_registry)
        if not self.polls_registry:
            self._follow_handover()
            return
        try:
            ref = self.client.resolve(self.settings.model_name, self.settings.alias)
        except RegistryError as exc:
            self._poll_error(exc)
            return
        self.state.last_poll_success = time.time()
        if self._registry_down:
            self._registry_down = False
            log.info("the registry answers again")
        served = self.predictor.model.version if self.predictor else None
        if ref.version == served:
            self.state.stale = False
            return
        if self._failed == (ref.version, ref.sha256):
            return  # reported already; the registry's versions are immutable
        try:
            payload = self.client.download(ref)
        except (ChecksumError, ArtifactMissing) as exc:  # the version itself is broken, not the registry
            self._load_failed(ref, str(exc))
            return
        except RegistryError as exc:
            self._poll_error(exc)
            return
        try:
            predictor = self._prepare(ref, payload)
        except Exception as exc:  # noqa: BLE001 - a broken artifact must never take the server down
            self._load_failed(ref, f"onnxruntime cannot load it: {exc}")
            return
        saved = ModelRef(ref.name, ref.version, predictor.model.sha256)
        try:
            self.cache.save(saved, payload)
        except OSError as exc:
            log.warning("could not cache %s v%s on disk: %s", ref.name, ref.version, exc)
        if self._handover is not None:  # the other processes follow this
            try:
                self._handover.save(saved, payload)
            except OSError as exc:
                log.warning("could not hand %s v%s over to the other processes: %s", ref.name, ref.version, exc)
        self._swap(predictor, "the registry")

    def _follow_handover(self) -> None:
        """Serve the version the polling process handed over, once it differs from ours."""
        assert self._handover is not None
        ref = self._handover.peek()
        served = self.predictor.model.version if self.predictor else None
        if ref is None or ref.version == served or self._failed == (ref.version, ref.sha256):
            return
        cached = self._handover.load()
        if cached is None or cached[0] != ref:  # being replaced right now: the next look
            return
        try:
            predictor = self._prepare(*cached)
        except Exception as exc:  # noqa: BLE001 - a broken artifact must never take the server down
            self._load_failed(ref, f"onnxruntime cannot load the cached file: {exc}")
            return
        self._swap(predictor, "the registry (handed over by the process that polls it)")

    def _prepare(self, ref: ModelRef, payload: bytes) -> Predictor:
        predictor = self._make(OnnxModel(payload, ref.name, ref.version))
        predictor.warm_up()
        return predictor

    def _swap(self, predictor: Predictor, source: str) -> None:
        old, self.predictor = self.predictor, predictor
        model = predictor.model
        self.state.version, self.state.sha256, self.state.loaded_at = model.version, model.sha256, time.time()
        self.state.stale = False
        if old is not None:
            self.state.swaps += 1
        log.info("now serving %s v%s from %s (was %s)", model.name, model.version, source,
                 f"v{old.model.version}" if old else "nothing")

    def _load_failed(self, ref: ModelRef, reason: str) -> None:
        self._failed = (ref.version, ref.sha256)
        self.state.load_failures += 1
        self.state.stale = True
        self.last_error = f"{ref.name} v{ref.version}: {reason}"
        log.error("version %s of %s failed to load, keeping %s: %s", ref.version, ref.name, self._serving(), reason)

    def _poll_error(self, exc: RegistryError) -> None:
        self.state.poll_errors += 1
        self.last_error = str(exc)
        if not self._registry_down:  # once per outage, not once per poll
            self._registry_down = True
            log.warning("registry poll failed, keeping %s until it answers: %s", self._serving(), exc)

    def _serving(self) -> str:
        return f"v{self.predictor.model.version}" if self.predictor else "no model"
