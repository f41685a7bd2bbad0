"""Metrics, request ids and log lines, against the real server and worker."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from ..helpers import bounded, drain, kill_if_running, sse_events, start_server, worker_entry

COMPLETION = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 8, "ignore_eos": True}


async def _metrics(admin: httpx.AsyncClient) -> dict[tuple[str, tuple], float]:
    response = await admin.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@bounded(90)
async def test_metrics_count_requests_tokens_latencies_and_workers(client, admin, server):
    usages = []
    for _ in range(2):  # the second hits the prompt cache
        usages.append((await client.post("/v1/completions", json=COMPLETION)).json()["usage"])
    streamed = await client.post("/v1/completions", json={**COMPLETION, "stream": True, "stream_options": {"include_usage": True}})
    usages.append(sse_events(streamed.text)[-2]["usage"])
    assert (await client.post("/v1/completions", json={**COMPLETION, "max_tokens": 0})).status_code == 400
    assert (await client.post("/v1/completions", json={**COMPLETION, "model": "no/such"})).status_code == 404

    samples = await _metrics(admin)
    assert _value(samples, "mlxtrio_requests_total", surface="openai", endpoint="/v1/completions", model="demo", status="200") == 3
    # Requests refused before their model resolved carry no model: ids from clients never become labels.
    assert _value(samples, "mlxtrio_requests_total", surface="openai", endpoint="/v1/completions", model="", status="400") == 1
    assert _value(samples, "mlxtrio_requests_total", surface="openai", endpoint="/v1/completions", model="", status="404") == 1
    assert _value(samples, "mlxtrio_completion_tokens_total", model="demo") == sum(u["completion_tokens"] for u in usages) == 24
    assert _value(samples, "mlxtrio_prompt_tokens_total", model="demo") == sum(u["prompt_tokens"] for u in usages)
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert cached > 0 and _value(samples, "mlxtrio_prompt_cache_hit_tokens_total", model="demo") == cached
    assert _value(samples, "mlxtrio_prompt_cache_hits_total", model="demo") >= 1
    assert _value(samples, "mlxtrio_time_to_first_token_seconds_count", model="demo") == 3
    # Eight tokens, seven gaps, per request.
    assert _value(samples, "mlxtrio_inter_token_latency_seconds_count", model="demo") == 21
    assert _value(samples, "mlxtrio_model_state", model="demo", state="ready") == 1
    assert _value(samples, "mlxtrio_model_loads_total", model="demo") == 1
    assert _value(samples, "mlxtrio_model_load_seconds", model="demo") > 0
    assert _value(samples, "mlxtrio_worker_memory_bytes", model="demo") > 0

    orchestrator_log = _Records.attach("mlxtrio.orchestrator")
    try:
        worker_pid = (await worker_entry(admin))["pid"]
        os.kill(worker_pid, signal.SIGKILL)
        await (await server.state.supervisor.served_model("demo")).wait_stopped()
    finally:
        orchestrator_log.detach()
    # Killed by someone else: a crash, and a warning.
    crash = await orchestrator_log.wait_for(levelno=logging.WARNING)
    assert "killed by SIGKILL" in crash.getMessage() and str(worker_pid) in crash.getMessage()
    assert (await client.post("/v1/completions", json=COMPLETION)).status_code == 200
    samples = await _metrics(admin)
    assert _value(samples, "mlxtrio_worker_restarts_total", model="demo", cause="crash") == 1
    assert _value(samples, "mlxtrio_model_loads_total", model="demo") == 2


@bounded(60)
async def test_active_sequences_are_a_gauge(client, admin):
    async with client.stream("POST", "/v1/completions", json={**COMPLETION, "max_tokens": 4000, "stream": True}) as response:
        lines = response.aiter_lines()  # held: a dropped iterator is finalized, closing the stream
        async for line in lines:
            if line.startswith("data: {"):
                break
        assert _value(await _metrics(admin), "mlxtrio_active_sequences", model="demo") == 1


class _Records(logging.Handler):
    """Log records of one logger; ``wait_for`` returns when one matches (the server logs in this thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()

    @classmethod
    def attach(cls, name: str, level: int = logging.DEBUG) -> _Records:
        handler = cls()
        handler.logger, handler.level_before = logging.getLogger(name), logging.getLogger(name).level
        handler.logger.addHandler(handler)
        handler.logger.setLevel(level)
        return handler

    def detach(self) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)

    async def wait_for(self, **fields: object) -> logging.LogRecord:
        while True:
            for record in self.records:
                if all(getattr(record, key, None) == value for key, value in fields.items()):
                    return record
            self._changed = trio.Event()
            await self._changed.wait()


@pytest.fixture
def request_log():  # noqa: ANN201
    handler = _Records.attach("mlxtrio.requests")
    yield handler
    handler.detach()


@bounded(60)
async def test_request_ids_and_one_log_line_per_request(client, request_log):
    response = await client.post("/v1/completions", json=COMPLETION, headers={"X-Request-Id": "client-id-42"})
    assert response.headers["X-Request-Id"] == "client-id-42"
    line = await request_log.wait_for(request_id="client-id-42")
    usage = response.json()["usage"]
    assert (line.model, line.status, line.stream, line.endpoint) == ("demo", 200, False, "/v1/completions")
    assert (line.prompt_tokens, line.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert 0 < line.ttft_ms <= line.duration_ms
    assert "client-id-42" in line.getMessage() and "status=200" in line.getMessage()

    # An id that is not tame is replaced; every response has one, errors included.
    bad = await client.post("/v1/completions", json={**COMPLETION, "max_tokens": -1}, headers={"X-Request-Id": "a b\tc"})
    assert bad.status_code == 400 and bad.headers["X-Request-Id"].startswith("req-")
    assert (await request_log.wait_for(request_id=bad.headers["X-Request-Id"])).status == 400

    # A stream's line comes when it ends, with its real outcome.
    async with client.stream("POST", "/v1/completions", json={**COMPLETION, "stream": True}, headers={"X-Request-Id": "s-1"}) as streamed:
        await streamed.aread()
    assert (await request_log.wait_for(request_id="s-1")).status == 200

    # Clients that leave: a stream mid-way, and a request before its answer.
    async with client.stream(
        "POST", "/v1/completions", json={**COMPLETION, "max_tokens": 4000, "stream": True}, headers={"X-Request-Id": "s-2"}
    ) as streamed:
        async for chunk in streamed.aiter_lines():
            if chunk.startswith("data: {"):
                break
    assert (await request_log.wait_for(request_id="s-2")).status == 499
    with trio.move_on_after(0.3):
        await client.post("/v1/completions", json={**COMPLETION, "max_tokens": 4000}, headers={"X-Request-Id": "n-1"})
    assert (await request_log.wait_for(request_id="n-1")).status == 499


@bounded(60)
async def test_log_lines_say_what_the_request_named_and_leave_out_what_did_not_happen(client, admin, request_log):
    # Nothing generated: no time to a first token, rather than "ttft_ms=None".
    refused = await client.post("/v1/completions", json={**COMPLETION, "max_tokens": -1}, headers={"X-Request-Id": "r-400"})
    assert refused.status_code == 400
    line = await request_log.wait_for(request_id="r-400")
    assert not hasattr(line, "ttft_ms") and "ttft_ms" not in line.getMessage(), line.getMessage()

    # An unknown model is logged as the request named it; its untrusted text is bounded and kept on one line.
    unknown = await client.post("/v1/completions", json={**COMPLETION, "model": "no/such"}, headers={"X-Request-Id": "r-404"})
    assert unknown.status_code == 404
    assert (await request_log.wait_for(request_id="r-404")).model == "no/such"
    hostile = "evil\nmodel=forged status=200\r\x1b[31m\u2028" + "x" * 200
    forged = await client.post("/v1/completions", json={**COMPLETION, "model": hostile}, headers={"X-Request-Id": "r-forged"})
    assert forged.status_code == 404
    line = await request_log.wait_for(request_id="r-forged")
    message = line.getMessage()
    assert line.model.startswith("evil\\nmodel=forged") and len(line.model) <= 200, line.model
    assert message.isprintable() and "\x1b" not in line.model, message
    # Quoted in the text line, so that what it holds cannot pass for a field of its own.
    assert f"model={json.dumps(line.model, ensure_ascii=False)} status=404" in message, message

    not_loaded = await admin.post("/admin/load", json={"model": "no/such-admin"}, headers={"X-Request-Id": "r-admin"})
    assert not_loaded.status_code == 404
    assert (await request_log.wait_for(request_id="r-admin")).model == "no/such-admin"

    # A route with a variable is logged under a readable name; the variable is the model it named.
    missing = await client.get("/v1/models/no-such-model", headers={"X-Request-Id": "r-route"})
    assert missing.status_code == 404
    line = await request_log.wait_for(request_id="r-route")
    assert (line.endpoint, line.model) == ("/v1/models/{model_id}", "no-such-model"), (line.endpoint, line.model)
    assert "/v1/models/{model_id}" in line.getMessage()

    # The same readable name is the metric label, never the raw path, nor the model it named.
    exposition = (await admin.get("/metrics")).text
    assert "<path:" not in exposition and "no-such-model" not in exposition and "no/such" not in exposition
    samples = await _metrics(admin)
    assert _value(samples, "mlxtrio_requests_total", surface="openai", endpoint="/v1/models/{model_id}", model="", status="404") == 1


async def test_hypercorn_keeps_its_errors_but_not_its_running_on_lines(caplog):
    from mlxtrio._server import _hypercorn_config

    caplog.set_level(logging.DEBUG)
    config = _hypercorn_config("127.0.0.1", 0, 1.0)
    await config.log.info("Running on http://127.0.0.1:0 (CTRL + C to quit)")
    await config.log.error("a real error")
    await config.log.warning("a real warning")
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("hypercorn")]
    assert messages == ["a real error", "a real warning"]


@bounded(120)
async def test_json_logs_with_worker_stderr_and_loading_lines(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_LOG_FORMAT", "json")
    monkeypatch.setenv("MLXTRIO_FAILPOINTS", "step=error")  # the worker says why it gives up, on stderr
    process, url, _admin_url, log = await start_server(cache_dir, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            failed = await client.post("/v1/completions", json=COMPLETION, headers={"X-Request-Id": "json-1"})
            assert failed.status_code == 500
            assert (await client.post("/v1/completions", json=COMPLETION)).status_code == 503
        process.send_signal(signal.SIGTERM)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, process, log)
            with trio.fail_after(30):
                await process.wait()
    finally:
        await kill_if_running(process)
    lines = [json.loads(line) for line in b"".join(log).decode().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    request = next(line for line in lines if line.get("request_id") == "json-1")
    assert (request["logger"], request["status"], request["model"]) == ("mlxtrio.requests", 500, "demo")
    assert "ttft_ms" not in request  # it generated nothing
    # Hypercorn's own "Running on" lines would repeat this one.
    banners = [line for line in lines if "API on" in line["message"] or "Running on" in line["message"]]
    assert len(banners) == 1 and banners[0]["message"].startswith(f"OpenAI API on {url}, admin API on "), banners
    worker = [line for line in lines if line["logger"] == "mlxtrio.worker"]
    assert any("generation keeps failing" in line["message"] for line in worker), worker
    assert any(line["message"].startswith("loading model 'demo' (worker pid") for line in lines)
    assert any("ready in" in line["message"] for line in lines)


def test_the_log_format_is_checked():
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "mlxtrio", "serve", "--log-format", "xml"], capture_output=True, check=False
    )
    assert result.returncode == 2 and b"invalid choice" in result.stderr


@bounded(60)
async def test_a_load_says_it_is_still_loading(admin, monkeypatch):
    from mlxtrio.orchestrator import _served_model as _worker

    monkeypatch.setattr(_worker, "_LOADING_REPORT_INTERVAL", 0.1)  # the demo loads in about a second
    logger = logging.getLogger("mlxtrio.orchestrator")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert (await admin.post("/admin/load", json={"model": "demo"})).status_code == 200
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    messages = [record.getMessage() for record in handler.records]
    assert messages[0].startswith("loading model 'demo' (worker pid")
    assert any(message.startswith("still loading model 'demo'") for message in messages), messages
    assert "ready in" in messages[-1]
