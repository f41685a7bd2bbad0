"""Each request, observed: an id (echoed in ``X-Request-Id``), one log line, and the metrics.

A request ends in one of three places, and each finishes its record once:
``after_request`` for ordinary responses (errors included), the stream's
body when it ends (its outcome is only known then), or ``teardown_request``
when the client left before a response (status 499, nginx's "client closed
request").
"""

from __future__ import annotations

import json
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
# A route's variables, as Werkzeug writes them (<path:model_id>), and as a person reads them ({model_id}).
_ROUTE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")
# The route variable that names a model, for the log line of a request refused before its model resolved.
_MODEL_VARIABLE = "model_id"
# How much of a model id the log keeps: the id is the client's text, of any length.
_LOGGED_MODEL_LIMIT = 128
# A text-line value that a reader (or a log parser) could take for more than one field.
_NEEDS_QUOTES = re.compile(r"[\s=\"\\]")


def endpoint_name(rule: str) -> str:
    """A route's name in logs and metric labels: its template, variables as {name}; never the path asked for."""
    return _ROUTE_VARIABLE.sub(r"{\1}", rule)


def loggable(text: str) -> str:
    """Untrusted text for a log line: every character that is not printable escaped, the length bounded."""
    # A backslash too: an escape in the text must not read as one of ours.
    shown = "".join(
        character if character.isprintable() and character != "\\" else character.encode("unicode_escape").decode("ascii")
        for character in text[:_LOGGED_MODEL_LIMIT]
    )
    return shown + "…" if len(text) > _LOGGED_MODEL_LIMIT else shown


@attrs.define(eq=False)
class RequestRecord:
    request_id: str
    method: str
    endpoint: str
    metrics: Metrics
    # The API surface whose route it is ("openai", "anthropic", "responses"; "server" for the app's own, "" for none).
    surface: str = ""
    started: float = attrs.Factory(time.perf_counter)
    # Set once the model id resolved: an unknown id must not become a label value.
    model: str = ""
    # The model the request named, for its log line only (``loggable``): shown when it did not resolve.
    named_model: str = ""
    streaming: bool = False
    prompt_tokens: int = 0
    cached_tokens: int = 0
    first_token_at: float | None = None
    # An embedding request's inputs were embedded: its prompt tokens count as served.
    embedded: bool = False
    # Seconds this request waited for its model to load (0: it was loaded), and when it was ready for it.
    load_seconds: float = 0.0
    ready_at: float | None = None
    _completion_tokens: dict[int, int] = attrs.Factory(dict)
    _last_token_at: dict[int, float] = attrs.Factory(dict)
    # This request's inter-token histogram, looked up once (on_delta runs per token).
    _token_gaps: Any = None
    _finished: bool = False

    def on_delta(self, choice: int, delta: Delta) -> None:
        if delta.finish_reason == "counted":
            # A count processed no prompt: logged with its count, not added to the prompt tokens served.
            self.prompt_tokens = delta.prompt_tokens
            return
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

    def on_embedded(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.embedded = True

    def model_ready(self, waited_since: float) -> None:
        """The request's model is loaded: it waited for that since ``waited_since`` (``time.perf_counter``)."""
        self.ready_at = time.perf_counter()
        self.load_seconds += self.ready_at - waited_since

    def name_model(self, model: str) -> None:
        """The model the request named, as its log line shows it (a label takes only ``model``, once resolved)."""
        self.named_model = loggable(model)

    @property
    def completion_tokens(self) -> int:
        return sum(self._completion_tokens.values())

    def finish(self, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        seconds = time.perf_counter() - self.started
        metrics, model = self.metrics, self.model
        metrics.requests.labels(self.surface, self.endpoint, model, str(status)).inc()
        metrics.request_duration.labels(self.endpoint, model).observe(seconds)
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        if model and (self._completion_tokens or self.embedded):
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
            "surface": self.surface,
            "model": model or self.named_model,
            "status": status,
            "stream": self.streaming,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
        }
        if ttft is not None:
            # Left out, in text and JSON alike, when nothing was generated.
            fields["ttft_ms"] = round(ttft * 1000, 1)
        fields["duration_ms"] = round(seconds * 1000, 1)
        summary = " ".join(
            f"{key}={_quoted(value) if isinstance(value, str) else value}"
            for key, value in fields.items()
            if key not in ("request_id", "method", "endpoint")
        )
        # Probes and scrapes would drown the rest.
        level = logging.DEBUG if self.endpoint in _QUIET_ENDPOINTS else logging.INFO
        request_log.log(level, "%s %s %s %s", self.request_id, self.method, self.endpoint, summary, extra=fields)


def _quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if _NEEDS_QUOTES.search(value) else value


def current_record() -> RequestRecord:
    return g.record


def install_observability(app: QuartTrio, metrics: Metrics, *, own_surface: str) -> None:
    """Before any other hook: even a refused request gets an id, a log line and a count.

    ``own_surface`` labels the app's own routes; a blueprint's routes are the surface it is named after.
    """

    @app.before_request
    async def begin() -> None:
        given = request.headers.get("X-Request-Id", "")
        request_id = given if _CLIENT_REQUEST_ID.fullmatch(given) else "req-" + secrets.token_hex(8)
        routed = request.url_rule is not None
        endpoint = endpoint_name(request.url_rule.rule) if routed else "other"
        # A blueprint is a surface's routes (``_surface.Surface``); the app's own routes are the server's.
        surface = (request.blueprint or own_surface) if routed else ""
        g.record = record = RequestRecord(request_id, request.method, endpoint, metrics, surface=surface)
        named = (request.view_args or {}).get(_MODEL_VARIABLE)
        if isinstance(named, str):
            record.name_model(named)

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
