"""The real agents: Claude Code (``claude -p``) and Codex CLI (``codex exec``) complete a turn against the demo model.

Each CLI is the pinned npm package that ``make test`` installs into
tests/e2e/agents (``make agents``). The demo model's text is nonsense; what
must hold is the protocol: the CLI ends its turn successfully, and mlxtrio's
metrics show every request it made was served, with a 200, by the surface the
CLI speaks, with the token counts the CLI reports.

The demo model has a 4096-token context, so each CLI runs with the options
that keep its request small (its default system prompt and tools take ten
times that). A nonsense model can also talk until it runs out of room, which
each CLI treats as a failed turn (Codex fails on ``response.incomplete``,
Claude Code on repeated ``max_tokens``); such a run, recognised by its exact
message, is run again, at most ``ATTEMPTS`` times in all.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from mlxtrio import ServerHandle

from ..helpers import bounded

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "tests" / "e2e" / "agents"
BIN = AGENTS / "node_modules" / ".bin"
# A nonsense model runs out of room in about one run in a hundred; three in a row would be a real fault.
ATTEMPTS = 3
# A turn's output, at most: with Claude Code's ~1,300-token request it leaves room for one continuation.
CLAUDE_MAX_OUTPUT_TOKENS = 1300


@pytest.fixture(scope="session")
def agent_bin() -> Path:
    """The CLIs as tests/e2e/agents/package-lock.json pins them, installed by the Makefile's step if not yet."""
    subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "agents"], check=True, stdout=subprocess.DEVNULL)
    return BIN


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _metrics(admin: httpx.AsyncClient) -> Samples:
    response = await admin.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _grown(before: Samples, after: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """How much each of ``name``'s samples grew between two scrapes, by its labels."""
    return {
        labels: value - before.get((sample, labels), 0.0)
        for (sample, labels), value in after.items()
        if sample == name and value != before.get((sample, labels), 0.0)
    }


def _total(grown: dict[tuple[tuple[str, str], ...], float]) -> int:
    return int(sum(grown.values()))


def _environment(home: Path, **variables: str) -> dict[str, str]:
    """A CLI's environment: none of the developer's keys, settings or home, only what the test gives it."""
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", **variables}


async def _run(command: list[str], *, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    cwd.mkdir(exist_ok=True)
    result = await trio.run_process(
        command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True, check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def _served_turn(
    admin: httpx.AsyncClient, attempt: Callable[[], Awaitable[tuple[dict, bool]]]
) -> tuple[dict, Samples, Samples]:
    """Run the CLI until a turn succeeds: its report, and the metrics before and after the successful run."""
    for _ in range(ATTEMPTS):
        before = await _metrics(admin)
        report, succeeded = await attempt()
        if succeeded:
            return report, before, await _metrics(admin)
    raise AssertionError(f"the demo model ran out of room {ATTEMPTS} times in a row: {report}")


def _assert_served_by(before: Samples, after: Samples, endpoint: str) -> dict[str, int]:
    """Every request of the turn went to ``endpoint`` and got a 200; the tokens the server counted."""
    requests = _grown(before, after, "mlxtrio_requests_total")
    assert requests, "the CLI's turn reached no mlxtrio endpoint"
    statuses = {(dict(labels)["endpoint"], dict(labels)["status"]): int(count) for labels, count in requests.items()}
    assert set(statuses) == {(endpoint, "200")}, statuses
    assert {dict(labels)["model"] for labels in requests} == {"demo"}
    return {
        "requests": _total(requests),
        "prompt": _total(_grown(before, after, "mlxtrio_prompt_tokens_total")),
        "completion": _total(_grown(before, after, "mlxtrio_completion_tokens_total")),
        "cached": _total(_grown(before, after, "mlxtrio_prompt_cache_hit_tokens_total")),
    }


@bounded(240)
async def test_claude_code_completes_a_turn_through_messages(server: ServerHandle, admin, agent_bin, tmp_path):
    env = _environment(
        tmp_path / "home",
        ANTHROPIC_BASE_URL=server.openai_url,
        ANTHROPIC_API_KEY="unused",
        ANTHROPIC_MODEL="demo",
        ANTHROPIC_DEFAULT_OPUS_MODEL="demo",
        ANTHROPIC_DEFAULT_SONNET_MODEL="demo",
        ANTHROPIC_DEFAULT_HAIKU_MODEL="demo",
        CLAUDE_CODE_SUBAGENT_MODEL="demo",
        CLAUDE_CODE_MAX_OUTPUT_TOKENS=str(CLAUDE_MAX_OUTPUT_TOKENS),
        DISABLE_TELEMETRY="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    # --bare: no hooks, plugins, CLAUDE.md or memory; one built-in tool, so the tools still travel.
    command = [
        str(agent_bin / "claude"), "-p", "Say hi.", "--bare", "--system-prompt", "Be brief.", "--tools", "Bash",
        "--output-format", "json", "--no-session-persistence",
    ]  # fmt: skip

    async def attempt() -> tuple[dict, bool]:
        status, stdout, stderr = await _run(command, env=env, cwd=tmp_path / "work")
        assert stdout.strip(), f"exit {status}, no result: {stderr[-2000:]}"
        report = json.loads(stdout)
        if status != 0 and report.get("is_error"):
            ran_out = "output token maximum" in report.get("result", "") or "maximum context length" in report.get("result", "")
            assert ran_out, f"exit {status}: {report.get('result')!r}\n{stderr[-2000:]}"
            return report, False
        assert status == 0, f"exit {status}: {stdout[-2000:]}\n{stderr[-2000:]}"
        return report, True

    report, before, after = await _served_turn(admin, attempt)
    assert report["type"] == "result" and report["subtype"] == "success" and report["is_error"] is False, report
    served = _assert_served_by(before, after, "/v1/messages")
    # Anthropic's usage: input_tokens leaves out what the prompt cache served.
    usage = report["usage"]
    reported_prompt = usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
    assert (reported_prompt, usage["output_tokens"]) == (served["prompt"], served["completion"]), (usage, served)
    assert usage["cache_read_input_tokens"] == served["cached"], (usage, served)
    assert report["num_turns"] >= 1 and served["requests"] >= 1


CODEX_CONFIG = """\
model = "demo"
model_provider = "mlxtrio"
web_search = "disabled"
model_instructions_file = "{instructions}"
include_environment_context = false
include_permissions_instructions = false

[agents]
enabled = false

[skills]
include_instructions = false

[tools.experimental_request_user_input]
enabled = false

[features]
goals = false
view_image = false

[model_providers.mlxtrio]
name = "mlxtrio"
base_url = "{base_url}/v1"
env_key = "MLXTRIO_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""
# Codex's one notice on a model it has no metadata for: an "error" item that is not one.
_CODEX_NOTICE = "Model metadata for `demo` not found"
_CODEX_RAN_OUT = "Incomplete response returned, reason: max_output_tokens"


@bounded(240)
async def test_codex_completes_a_turn_through_responses(server: ServerHandle, admin, agent_bin, tmp_path):
    codex_home = tmp_path / "codex"
    codex_home.mkdir()
    # Codex's own instructions and tools fill six times the demo model's context: a short prompt, no hosted tools.
    (codex_home / "instructions.md").write_text("You are a terse assistant.\n")
    (codex_home / "config.toml").write_text(
        CODEX_CONFIG.format(instructions=codex_home / "instructions.md", base_url=server.openai_url)
    )
    env = _environment(tmp_path / "home", CODEX_HOME=str(codex_home), MLXTRIO_API_KEY="unused")
    command = [str(agent_bin / "codex"), "exec", "--json", "--skip-git-repo-check", "Say hi."]

    async def attempt() -> tuple[dict, bool]:
        status, stdout, stderr = await _run(command, env=env, cwd=tmp_path / "work")
        events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        failed = [event for event in events if event["type"] in ("error", "turn.failed")]
        if status != 0 and failed and all(_CODEX_RAN_OUT in json.dumps(event) for event in failed):
            return {"events": events}, False
        assert status == 0 and not failed, f"exit {status}: {stdout[-3000:]}\n{stderr[-2000:]}"
        return {"events": events}, True

    report, before, after = await _served_turn(admin, attempt)
    events = report["events"]
    errors = [event["item"] for event in events if event["type"] == "item.completed" and event["item"]["type"] == "error"]
    assert all(error["message"].startswith(_CODEX_NOTICE) for error in errors), errors
    assert any(event["type"] == "item.completed" and event["item"]["type"] == "agent_message" for event in events), events
    completed = [event for event in events if event["type"] == "turn.completed"]
    assert len(completed) == 1, events
    served = _assert_served_by(before, after, "/v1/responses")
    # OpenAI's usage: input_tokens counts the cached ones too.
    usage = completed[0]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (served["prompt"], served["completion"]), (usage, served)
    assert usage["cached_input_tokens"] == served["cached"], (usage, served)
