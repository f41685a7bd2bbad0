"""Each request, observed: an id (echoed in ``X-Request-Id``), one log line, and the metrics.

A request ends in one of three places, and each finishes its record once:
``after_request`` for ordinary responses (errors included), the stream's
body when it ends (its outcome is only known then), or ``teardown_request``
when the client left before a response (status 499, nginx's "client closed
request").
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

import attrs
from quart import Response, g, request
from quart_trio import QuartTrio

from .._metrics import Metrics
from .._protocol import Delta

__all__ = ["RequestRecord", "current_record", "install_observability"]

request_log = logging.getLogger("mlxtrio.requests")
# A client's own id is kept if it is this tame; otherwise we make one.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
CLIENT_CLOSED_REQUEST = 499
_QUIET_ENDPOINTS = frozenset({"/health", "/metrics", "/admin/status", "/admin/health"})


@attrs.define(eq=False)
class RequestRecord:
    request_id: str
    method: str
    endpoint: str
    metrics: Metrics
    started: float = attrs.Factory(time.perf_counter)
    # Set once the model id resolved: an unknown id must not become a label value.
    model: str = ""
    streaming: bool = False
    prompt_tokens: int = 0
    cached_tokens: int = 0
    first_token_at: float | None = None
    _completion_tokens: dict[int, int] = attrs.Factory(dict)
    _last_token_at: dict[int, float] = attrs.Factory(dict)
    # This request's inter-token histogram, looked up once (on_delta runs per token).
    _token_gaps: Any = None
    _finished: bool = False

    def on_delta(self, choice: int, delta: Delta) -> None:
        now = time.perf_counter()
        new_tokens = delta.completion_tokens - self._completion_tokens.get(choice, 0)
        self._completion_tokens[choice] = delta.completion_tokens
        self.prompt_tokens = delta.prompt_tokens
        self.cached_tokens = max(self.cached_tokens, delta.cached_tokens)
        if new_tokens <= 0:
            return
        if self.first_token_at is None:
            self.first_token_at = now
        # As the client sees it: the first token of a delta after the gap since
        # the previous delta, tokens that came with it (held back together: a
        # character split across tokens, a possible stop string) after none.
        if self._token_gaps is None:
            self._token_gaps = self.metrics.inter_token_latency.labels(self.model)
        histogram = self._token_gaps
        previous = self._last_token_at.get(choice)
        if previous is not None:
            histogram.observe(now - previous)
        for _ in range(new_tokens - 1):
            histogram.observe(0.0)
        self._last_token_at[choice] = now

    @property
    def completion_tokens(self) -> int:
        return sum(self._completion_tokens.values())

    def finish(self, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        seconds = time.perf_counter() - self.started
        metrics, model = self.metrics, self.model
        metrics.requests.labels(self.endpoint, model, str(status)).inc()
        metrics.request_duration.labels(self.endpoint, model).observe(seconds)
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        if model and self._completion_tokens:
            metrics.prompt_tokens.labels(model).inc(self.prompt_tokens)
            metrics.completion_tokens.labels(model).inc(self.completion_tokens)
            if self.cached_tokens:
                metrics.prompt_cache_hits.labels(model).inc()
                metrics.prompt_cache_hit_tokens.labels(model).inc(self.cached_tokens)
            if ttft is not None:
                metrics.time_to_first_token.labels(model).observe(ttft)
        fields = {
            "request_id": self.request_id,
            "method": self.method,
            "endpoint": self.endpoint,
            "model": model,
            "status": status,
            "stream": self.streaming,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
            "duration_ms": round(seconds * 1000, 1),
        }
        summary = " ".join(f"{key}={value}" for key, value in fields.items() if key not in ("request_id", "method", "endpoint"))
        # Probes and scrapes would drown the rest.
        level = logging.DEBUG if self.endpoint in _QUIET_ENDPOINTS else logging.INFO
        request_log.log(level, "%s %s %s %s", self.request_id, self.method, self.endpoint, summary, extra=fields)


def current_record() -> RequestRecord:
    return g.record


def install_observability(app: QuartTrio, metrics: Metrics) -> None:
    """Before any other hook: even a refused request gets an id, a log line and a count."""

    @app.before_request
    async def begin() -> None:
        given = request.headers.get("X-Request-Id", "")
        request_id = given if _CLIENT_REQUEST_ID.fullmatch(given) else "req-" + secrets.token_hex(8)
        endpoint = request.url_rule.rule if request.url_rule is not None else "other"
        g.record = RequestRecord(request_id, request.method, endpoint, metrics)

    @app.after_request
    async def end(response: Response) -> Response:
        record: RequestRecord | None = g.get("record")
        if record is not None:
            response.headers["X-Request-Id"] = record.request_id
            if not record.streaming:
                record.finish(response.status_code)
        return response

    @app.teardown_request
    async def gone(_error: BaseException | None) -> None:
        record: RequestRecord | None = g.get("record")
        if record is not None and not record.streaming:
            record.finish(CLIENT_CLOSED_REQUEST)
