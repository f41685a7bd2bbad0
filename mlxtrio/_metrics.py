"""Prometheus metrics (prometheus-client), served at /metrics on the admin port.

Events (requests, tokens, latencies) are counted as they happen by the HTTP
side; the state of each model's worker (queue, sequences, memory, restarts by
cause, loads) is read from ``Supervisor.statistics()`` at scrape time, so it
is never stale and costs nothing between scrapes. One registry per server:
tests run several servers in one process.

Label values are bounded: a model label is only ever a model the catalog
resolved (an unknown id counts as ``""``), an endpoint label only a route the
app has, its variables written ``{name}`` (``api._observe.endpoint_name``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .orchestrator import ModelStatus

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _WorkerCollector(Collector):
    """Each model's worker, as ``/admin/status`` shows it, at scrape time."""

    def __init__(self, statistics: Callable[[], Sequence[ModelStatus]]) -> None:
        self._statistics = statistics

    def collect(self) -> Iterator[Metric]:
        statuses = self._statistics()
        state = GaugeMetricFamily("mlxtrio_model_state", "1 for the state each model's worker is in", labels=["model", "state"])
        active = GaugeMetricFamily("mlxtrio_active_sequences", "Sequences in flight (decoding or waiting)", labels=["model"])
        queued = GaugeMetricFamily("mlxtrio_queued_sequences", "Sequences waiting beyond the decode concurrency", labels=["model"])
        memory = GaugeMetricFamily("mlxtrio_worker_memory_bytes", "Memory of the loaded model, as MLX reports it", labels=["model"])
        load_seconds = GaugeMetricFamily("mlxtrio_model_load_seconds", "How long the latest load took", labels=["model"])
        loads = CounterMetricFamily("mlxtrio_model_loads", "Worker processes started", labels=["model"])
        restarts = CounterMetricFamily("mlxtrio_worker_restarts", "Unexpected worker exits, by cause", labels=["model", "cause"])
        rank_up = GaugeMetricFamily(
            "mlxtrio_rank_up", "1 while a worker group's rank runs, 0 once it has exited", labels=["model", "rank", "host"]
        )
        rank_memory = GaugeMetricFamily(
            "mlxtrio_rank_memory_bytes", "Memory of a worker group's rank once loaded, as MLX reports it", labels=["model", "rank", "host"]
        )
        for status in statuses:
            for name in ("unloaded", "loading", "ready", "failed"):
                state.add_metric([status.model, name], 1.0 if status.state == name else 0.0)
            active.add_metric([status.model], status.active_requests)
            queued.add_metric([status.model], status.queued_requests)
            if status.memory_bytes is not None:
                memory.add_metric([status.model], status.memory_bytes)
            if status.load_seconds is not None:
                load_seconds.add_metric([status.model], status.load_seconds)
            loads.add_metric([status.model], status.loads)
            for cause, count in sorted(status.restart_causes.items()):
                restarts.add_metric([status.model, cause], count)
            for rank in status.ranks:
                labels = [status.model, str(rank.rank), rank.host]
                rank_up.add_metric(labels, 1.0 if rank.state == "running" else 0.0)
                if rank.memory_bytes is not None:
                    rank_memory.add_metric(labels, rank.memory_bytes)
        yield from (state, active, queued, memory, load_seconds, loads, restarts, rank_up, rank_memory)


class Metrics:
    def __init__(self, worker_statistics: Callable[[], Sequence[ModelStatus]]) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "mlxtrio_requests", "HTTP requests by API surface, endpoint, model and final status", ["surface", "endpoint", "model", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "mlxtrio_request_duration_seconds", "From arrival to the last byte", ["endpoint", "model"],
            buckets=_DURATION_BUCKETS, registry=registry,
        )
        self.prompt_tokens = Counter("mlxtrio_prompt_tokens", "Prompt tokens of finished requests", ["model"], registry=registry)
        self.completion_tokens = Counter("mlxtrio_completion_tokens", "Tokens generated", ["model"], registry=registry)
        self.prompt_cache_hits = Counter(
            "mlxtrio_prompt_cache_hits", "Requests whose prompt reused a cached prefix", ["model"], registry=registry
        )
        self.prompt_cache_hit_tokens = Counter(
            "mlxtrio_prompt_cache_hit_tokens", "Prompt tokens not computed thanks to the prompt cache", ["model"], registry=registry
        )
        self.time_to_first_token = Histogram(
            "mlxtrio_time_to_first_token_seconds", "From arrival to the first generated token", ["model"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.inter_token_latency = Histogram(
            "mlxtrio_inter_token_latency_seconds", "Time between generated tokens of one sequence", ["model"],
            buckets=_TOKEN_GAP_BUCKETS, registry=registry,
        )
        registry.register(_WorkerCollector(worker_statistics))

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
