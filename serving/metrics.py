"""Prometheus metrics in the text exposition format (format 0.0.4), kept as plain counters.

No client library: the set is small and fixed. A request's observation is one list append; the
appended ones are folded into the counters when they are read, or every 512 requests (numpy then
bins their durations at once). With several server processes
(SERVING_WORKERS), each writes its counters to a shared folder every second, and whichever process
a scrape reaches answers with their sum (counters and histograms; the model gauges are its own).
"""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
SHARE_VAR = "SERVING_METRICS_SHARE"  # the folder where the worker processes' counters meet
# Requests of one (route, status) observed before they are folded into the counters: bounds their memory,
# and the pause of one fold (0.1 ms; 4,096 at once took 0.86 ms, in the middle of some request).
FOLD_EVERY = 512


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def observe_many(self, values: list[float]) -> None:
        # searchsorted "left" is bisect_left: a value on a bound counts in that bound's bucket (le=).
        bins = np.bincount(np.searchsorted(self.buckets, values, side="left"), minlength=len(self.counts))
        self.counts = [a + int(b) for a, b in zip(self.counts, bins, strict=True)]
        self.total += sum(values)
        self.n += len(values)

    def add(self, counts: list[int], total: float, n: int) -> None:
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.total += total
        self.n += n

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        block = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{block} {self.total!r}", f"{name}_count{block} {self.n}"]
        return out


@dataclass
class ModelState:
    """What the registry follower reports: the served version and how following went."""

    name: str = ""
    version: str | None = None
    sha256: str = ""
    loaded_at: float | None = None
    swaps: int = 0
    load_failures: int = 0
    poll_errors: int = 0
    last_poll_success: float | None = None
    stale: bool = False  # the alias names a version this server could not load
    polls_registry: int = 0  # 1 in the process that polls the registry (with several, one polls for all)


class Metrics:
    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.rows = 0
        self.batches = _Histogram(BATCH_BUCKETS)
        self.requests_per_batch = _Histogram(BATCH_BUCKETS)
        self.model = ModelState()
        self.log_rows = 0
        self.log_dropped = 0
        self.log_files = 0
        self.log_recovered = 0  # rows of files that stopped processes left open, completed here
        self.started = time.time()
        self.processes = 1  # server processes these counters add up (SERVING_WORKERS)
        # Durations of requests not yet folded into the counters, by (route, status): a fold then does
        # no Python work per request.
        self._observed: dict[tuple[str, int], list[float]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """One request: its route template, status and duration."""
        try:
            durations = self._observed[route, status]
        except KeyError:
            durations = self._observed[route, status] = []
        durations.append(seconds)
        if len(durations) >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        observed, self._observed = self._observed, {}
        for (route, status), durations in observed.items():
            self.requests[route, status] += len(durations)
            histogram = self.latency.get(route)
            if histogram is None:
                histogram = self.latency[route] = _Histogram(LATENCY_BUCKETS)
            histogram.observe_many(durations)

    def batch(self, rows: int, requests: int) -> None:
        self.rows += rows
        self.batches.observe(rows)
        self.requests_per_batch.observe(requests)

    def state(self) -> dict[str, Any]:
        """The counters, as JSON-ready data for the other processes."""
        self._fold()
        return {"requests": [[r, s, n] for (r, s), n in self.requests.items()],
                "latency": {r: [h.counts, h.total, h.n] for r, h in self.latency.items()},
                "rows": self.rows, "batches": [self.batches.counts, self.batches.total, self.batches.n],
                "requests_per_batch": [self.requests_per_batch.counts, self.requests_per_batch.total,
                                       self.requests_per_batch.n],
                "model": asdict(self.model), "log_rows": self.log_rows, "log_dropped": self.log_dropped,
                "log_files": self.log_files, "log_recovered": self.log_recovered, "started": self.started}

    def merged(self, others: list[dict[str, Any]]) -> Metrics:
        """These counters plus the other processes' (`state()`s); the model gauges stay this process's."""
        total = Metrics()
        total.model = ModelState(**asdict(self.model))
        total.started = self.started
        # A process that died (and was replaced) still counts for the requests it served, not as a process.
        total.processes = 1 + sum(1 for state in others if state.get("alive", True))
        for state in [self.state(), *others]:
            for route, status, n in state["requests"]:
                total.requests[(route, status)] += n
            for route, counts in state["latency"].items():
                total.latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).add(*counts)
            total.rows += state["rows"]
            total.batches.add(*state["batches"])
            total.requests_per_batch.add(*state["requests_per_batch"])
            total.log_rows += state["log_rows"]
            total.log_dropped += state["log_dropped"]
            total.log_files += state["log_files"]
            total.log_recovered += state.get("log_recovered", 0)
            total.started = min(total.started, state["started"])
        for state in others:
            model = state["model"]
            total.model.swaps += model["swaps"]
            total.model.load_failures += model["load_failures"]
            total.model.poll_errors += model["poll_errors"]
            if state.get("alive", True):
                total.model.polls_registry += model.get("polls_registry", 0)
                total.model.stale = total.model.stale or model["stale"]  # only the polling process knows
            total.model.last_poll_success = max(filter(None, [total.model.last_poll_success,
                                                              model["last_poll_success"]]), default=None)
        return total

    def share(self, folder: Path) -> None:
        """Write this process's counters for the others (whole, by rename: a reader never sees half)."""
        path = folder / f"{os.getpid()}.json"
        tmp = folder / f".{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.state()))
        tmp.replace(path)

    def render_shared(self, folder: Path) -> bytes:
        """The exposition for all the server's processes: this one's live counters plus the others' shared ones."""
        self.share(folder)
        others = []
        for path in folder.glob("*.json"):
            if path.stem != str(os.getpid()):
                try:
                    state = json.loads(path.read_text())
                except (OSError, ValueError):  # unreadable: skipped for this scrape, counted again the next
                    continue
                state["alive"] = _alive(int(path.stem)) if path.stem.isdigit() else False
                others.append(state)
        return self.merged(others).render()

    def render(self) -> bytes:
        self._fold()
        m = self.model
        out = [
            "# HELP serving_requests_total HTTP requests by route template and status code.",
            "# TYPE serving_requests_total counter",
            *(f'serving_requests_total{{route="{r}",status="{s}"}} {n}'
              for (r, s), n in sorted(self.requests.items())),
            "# HELP serving_request_duration_seconds Time from request start to response sent, by route.",
            "# TYPE serving_request_duration_seconds histogram",
            *(line for r, h in sorted(self.latency.items())
              for line in h.lines("serving_request_duration_seconds", f'route="{r}"')),
            "# HELP serving_rows_predicted_total Rows the model scored.",
            "# TYPE serving_rows_predicted_total counter",
            f"serving_rows_predicted_total {self.rows}",
            "# HELP serving_batch_rows Rows per onnxruntime call (concurrent requests are merged).",
            "# TYPE serving_batch_rows histogram",
            *self.batches.lines("serving_batch_rows", ""),
            "# HELP serving_batch_requests Requests merged into one onnxruntime call.",
            "# TYPE serving_batch_requests histogram",
            *self.requests_per_batch.lines("serving_batch_requests", ""),
            "# HELP serving_model_info The model version being served (value 1).",
            "# TYPE serving_model_info gauge",
            *([f'serving_model_info{{name="{m.name}",version="{m.version}",sha256="{m.sha256}"}} 1']
              if m.version is not None else []),
            "# HELP serving_model_loaded 1 once a model is loaded (readiness).",
            "# TYPE serving_model_loaded gauge",
            f"serving_model_loaded {int(m.version is not None)}",
            "# HELP serving_model_loaded_timestamp_seconds When the served version was loaded.",
            "# TYPE serving_model_loaded_timestamp_seconds gauge",
            f"serving_model_loaded_timestamp_seconds {m.loaded_at or 0}",
            "# HELP serving_model_swaps_total Times a new version replaced the served one.",
            "# TYPE serving_model_swaps_total counter",
            f"serving_model_swaps_total {m.swaps}",
            "# HELP serving_model_load_failures_total Versions that failed to download, verify or load.",
            "# TYPE serving_model_load_failures_total counter",
            f"serving_model_load_failures_total {m.load_failures}",
            "# HELP serving_model_stale 1 while the registry alias names a version this server could not load.",
            "# TYPE serving_model_stale gauge",
            f"serving_model_stale {int(m.stale)}",
            "# HELP serving_registry_poll_errors_total Registry polls that failed (registry unreachable, ...).",
            "# TYPE serving_registry_poll_errors_total counter",
            f"serving_registry_poll_errors_total {m.poll_errors}",
            "# HELP serving_registry_pollers Server processes that poll the registry (one polls for all).",
            "# TYPE serving_registry_pollers gauge",
            f"serving_registry_pollers {m.polls_registry}",
            "# HELP serving_registry_last_success_timestamp_seconds Last successful registry poll (0: never).",
            "# TYPE serving_registry_last_success_timestamp_seconds gauge",
            f"serving_registry_last_success_timestamp_seconds {m.last_poll_success or 0}",
            "# HELP serving_prediction_log_rows_total Rows written to the prediction log.",
            "# TYPE serving_prediction_log_rows_total counter",
            f"serving_prediction_log_rows_total {self.log_rows}",
            "# HELP serving_prediction_log_dropped_rows_total Sampled rows dropped (log writer behind).",
            "# TYPE serving_prediction_log_dropped_rows_total counter",
            f"serving_prediction_log_dropped_rows_total {self.log_dropped}",
            "# HELP serving_prediction_log_files_total Parquet files written to the prediction log.",
            "# TYPE serving_prediction_log_files_total counter",
            f"serving_prediction_log_files_total {self.log_files}",
            "# HELP serving_prediction_log_recovered_rows_total Rows of prediction-log files that a stopped process "
            "left open, completed from their journal.",
            "# TYPE serving_prediction_log_recovered_rows_total counter",
            f"serving_prediction_log_recovered_rows_total {self.log_recovered}",
            "# HELP serving_processes Server processes whose counters this answer adds up.",
            "# TYPE serving_processes gauge",
            f"serving_processes {self.processes}",
            "# HELP serving_start_timestamp_seconds When the server (its first process) started.",
            "# TYPE serving_start_timestamp_seconds gauge",
            f"serving_start_timestamp_seconds {self.started}",
        ]
        return ("\n".join(out) + "\n").encode()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
