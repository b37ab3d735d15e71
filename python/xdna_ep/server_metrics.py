"""What the server counts: ``GET /stats`` (JSON, for people) and ``GET /metrics`` (Prometheus' text
format, for the monitoring systems operators already run), from one place.

Prometheus metrics (prometheus_client, one registry per application, never the process-wide one):

- ``xdna_ep_http_requests_total{route, status}``: requests answered, by route template and status
  (499: the client left before its answer);
- ``xdna_ep_queue_depth``, ``xdna_ep_queue_capacity``, ``xdna_ep_ready``: admitted requests (running
  or waiting), how many may be, and 1 when ``/health`` answers 200;
- ``xdna_ep_transcriptions_total``, ``xdna_ep_audio_seconds_total``;
- histograms ``xdna_ep_real_time_factor`` (transcription time / audio duration),
  ``xdna_ep_decode_seconds`` (checking an upload's audio), ``xdna_ep_queue_wait_seconds`` and
  ``xdna_ep_transcription_seconds`` (on the device thread), per request;
- ``xdna_ep_npu_launches_total`` and ``xdna_ep_fallbacks_total{cause}``: the device layer's own
  counters (``xdna_ep.ep.stats``), read when scraped.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PrometheusCounter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from xdna_ep.server_queue import DeviceQueue
    from xdna_ep.server_requests import Outcome

# seconds: from a short clip on a fast machine to the longest recording on a slow one
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
REAL_TIME_FACTOR_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
UNMATCHED_ROUTE = "unmatched"  # label of requests no route took (404), so a scan cannot add label values


@dataclass
class ServerStats:
    """Counters behind ``GET /stats``; changed on the event loop's thread only."""

    started: float = field(default_factory=time.time)
    requests: Counter[str] = field(default_factory=Counter)  # by path
    responses: Counter[int] = field(default_factory=Counter)  # by HTTP status
    transcriptions: int = 0
    audio_seconds: float = 0.0
    transcribe_seconds: float = 0.0


class ServerMetrics:
    """The server's Prometheus metrics and ``/stats`` counters, recorded together."""

    def __init__(
        self, queue: DeviceQueue, ready: Callable[[], bool], device_totals: Callable[[], dict[str, Any]]
    ) -> None:
        self.stats = ServerStats()
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = PrometheusCounter(
            "xdna_ep_http_requests", "HTTP requests answered, by route and status", ["route", "status"],
            registry=registry,
        )
        Gauge("xdna_ep_queue_depth", "Requests admitted: running or waiting for the device",
              registry=registry).set_function(lambda: queue.admitted)
        Gauge("xdna_ep_queue_capacity", "Requests that may be admitted at once", registry=registry).set(queue.capacity)
        Gauge("xdna_ep_ready", "1 when /health answers 200 (the server can take work now)",
              registry=registry).set_function(lambda: 1.0 if ready() else 0.0)
        self.transcriptions = PrometheusCounter("xdna_ep_transcriptions", "Transcriptions answered", registry=registry)
        self.audio_seconds = PrometheusCounter(
            "xdna_ep_audio_seconds", "Seconds of audio transcribed", registry=registry
        )
        self.real_time_factor = Histogram(
            "xdna_ep_real_time_factor", "Transcription time over audio duration, per request",
            buckets=REAL_TIME_FACTOR_BUCKETS, registry=registry,
        )
        self.decode_seconds = Histogram(
            "xdna_ep_decode_seconds", "Checking an upload's audio (decoded as a stream, with the duration cap)",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.queue_seconds = Histogram(
            "xdna_ep_queue_wait_seconds", "Waiting for the device", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.transcribe_seconds = Histogram(
            "xdna_ep_transcription_seconds", "Transcription on the device thread",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        registry.register(_DeviceCollector(device_totals))

    def record_response(self, path: str, route: str, status: int) -> None:
        self.stats.requests[path] += 1
        self.stats.responses[status] += 1
        self.requests.labels(route=route, status=str(status)).inc()

    def record_decode(self, seconds: float) -> None:
        self.decode_seconds.observe(seconds)

    def record(self, outcome: Outcome) -> None:
        """A finished transcription."""
        self.stats.transcriptions += 1
        self.stats.audio_seconds += outcome.audio_seconds
        self.stats.transcribe_seconds += outcome.transcribe_seconds
        self.transcriptions.inc()
        self.audio_seconds.inc(outcome.audio_seconds)
        self.queue_seconds.observe(outcome.queue_seconds)
        self.transcribe_seconds.observe(outcome.transcribe_seconds)
        if outcome.audio_seconds > 0:
            self.real_time_factor.observe(outcome.transcribe_seconds / outcome.audio_seconds)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _DeviceCollector:
    """The device layer's launch and fallback counters, read at each scrape (they live in ``xdna_ep.ep.stats``)."""

    def __init__(self, device_totals: Callable[[], dict[str, Any]]) -> None:
        self.device_totals = device_totals

    def describe(self) -> list[Metric]:
        return list(self._families({"launches": 0, "fallback_causes": {}}))

    def collect(self) -> Iterator[Metric]:
        return self._families(self.device_totals())

    @staticmethod
    def _families(totals: dict[str, Any]) -> Iterator[Metric]:
        yield CounterMetricFamily("xdna_ep_npu_launches", "NPU kernel launches", value=totals.get("launches", 0))
        fallbacks = CounterMetricFamily(
            "xdna_ep_fallbacks", "xdna op calls recomputed on the CPU, by cause", labels=["cause"]
        )
        for cause, count in sorted(totals.get("fallback_causes", {}).items()):
            fallbacks.add_metric([cause], count)
        yield fallbacks


class CountResponses:
    """ASGI middleware: each answered request counted by path, route template and status (499: the client left)."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")  # set by the router once a route matched
                self.metrics.record_response(
                    scope["path"], getattr(route, "path", UNMATCHED_ROUTE), message["status"]
                )
            await send(message)

        await self.app(scope, receive, counting_send)
