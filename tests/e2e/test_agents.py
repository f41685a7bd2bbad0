"""The real agents: Claude Code (``claude -p``) and Codex CLI (``codex exec``) complete a turn against the demo model.

Each CLI is the pinned npm package that ``make test`` installs into
tests/e2e/agents (``make agents``), set up as the README's "Use it" section
says (its variables, its Codex profile), against a server that requires an
API key. The demo model's text is nonsense; what must hold is the protocol:
the CLI ends its turn successfully, and mlxtrio's metrics show every request
it made was served, with a 200, by the surface the CLI speaks, with the token
counts the CLI reports.

The demo model has a 4096-token context, so each CLI also gets the options
that keep its request small (its default system prompt and tools take ten
times that). A nonsense model can also talk until it runs out of room, which
each CLI treats as a failed turn (Codex fails on ``response.incomplete``,
Claude Code on repeated ``max_tokens``); such a run, recognised by its exact
message, is run again, at most ``ATTEMPTS`` times in all.
"""

from __future__ import annotations

import json
import os
import re
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
BIN = ROOT / "tests" / "e2e" / "agents" / "node_modules" / ".bin"
KEY = "e2e-agents-key"
# A nonsense model seldom talks until it runs out of room; three runs in a row that did would be a real fault.
ATTEMPTS = 3
# A turn's output, at most: with Claude Code's ~1,200-token request it leaves room for one continuation.
CLAUDE_MAX_OUTPUT_TOKENS = 1300


@pytest.fixture
def server_settings() -> dict:
    # Each CLI must send its key where mlxtrio reads it: Claude Code as x-api-key, Codex as a bearer token.
    return {"api_keys": (KEY,)}


@pytest.fixture(scope="session")
def agent_bin() -> Path:
    """The CLIs as tests/e2e/agents/package-lock.json pins them, installed by the Makefile's step if not yet."""
    subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "agents"], check=True, stdout=subprocess.DEVNULL)
    return BIN


def _readme_block(marker: str, server: ServerHandle) -> str:
    """The README's one sh block that holds ``marker``, for this server: its address, the demo model, the key."""
    blocks = [block for block in re.findall(r"^```sh\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S) if marker in block]
    assert len(blocks) == 1, f"the README's 'Use it' section shows {marker} in one sh block"
    local = blocks[0].replace("http://127.0.0.1:11440", server.openai_url).replace("=unused", f"={KEY}")
    return re.sub(r"\bMODEL\b", "demo", local)


def _exports(block: str) -> dict[str, str]:
    """The variables a shell block's ``export`` lines set."""
    exported = {}
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("export "):
            exported.update(re.findall(r"(\w+)=(\S+)", line.split("#")[0]))
    return exported


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


def _assert_served_by(before: Samples, after: Samples, surface: str, endpoint: str) -> dict[str, int]:
    """Every request of the turn went to ``surface``'s ``endpoint`` and got a 200; the tokens the server counted."""
    served = {}
    for labels, count in _grown(before, after, "mlxtrio_requests_total").items():
        named = dict(labels)
        # The test's own scrapes of /metrics count too, on the admin surface.
        if named["surface"] != "admin":
            served[named["surface"], named["endpoint"], named["model"], named["status"]] = int(count)
    assert set(served) == {(surface, endpoint, "demo", "200")}, served
    return {
        key: int(sum(_grown(before, after, f"mlxtrio_{metric}_total").values()))
        for key, metric in (("prompt", "prompt_tokens"), ("completion", "completion_tokens"), ("cached", "prompt_cache_hit_tokens"))
    }


def _environment(home: Path, variables: dict[str, str]) -> dict[str, str]:
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


@bounded(240)
async def test_claude_code_completes_a_turn_through_messages(server: ServerHandle, admin, agent_bin, tmp_path):
    readme = _exports(_readme_block("ANTHROPIC_BASE_URL", server))
    assert readme["ANTHROPIC_BASE_URL"] == server.openai_url and readme["ANTHROPIC_MODEL"] == "demo", readme
    env = _environment(
        tmp_path / "home",
        {
            **readme,
            # --bare reads the key from ANTHROPIC_API_KEY alone (sent as x-api-key), not the README's bearer token.
            "ANTHROPIC_API_KEY": readme["ANTHROPIC_AUTH_TOKEN"],
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(CLAUDE_MAX_OUTPUT_TOKENS),
            "DISABLE_TELEMETRY": "1",
        },
    )
    # --bare: no hooks, plugins, CLAUDE.md or memory; one built-in tool, so that tools still travel.
    command = [
        str(agent_bin / "claude"), "-p", "Say hi.", "--bare", "--system-prompt", "Be brief.", "--tools", "Bash",
        "--output-format", "json", "--no-session-persistence",
    ]  # fmt: skip

    async def attempt() -> tuple[dict, bool]:
        status, stdout, stderr = await _run(command, env=env, cwd=tmp_path / "work")
        assert stdout.strip(), f"exit {status}, no result: {stderr[-2000:]}"
        report = json.loads(stdout)
        if status != 0 and report.get("is_error"):
            result = report.get("result", "")
            assert "output token maximum" in result or "maximum context length" in result, f"exit {status}: {result!r}\n{stderr[-2000:]}"
            return report, False
        assert status == 0, f"exit {status}: {stdout[-2000:]}\n{stderr[-2000:]}"
        return report, True

    report, before, after = await _served_turn(admin, attempt)
    assert report["type"] == "result" and report["subtype"] == "success" and report["is_error"] is False, report
    served = _assert_served_by(before, after, "anthropic", "/v1/messages")
    # Anthropic's usage: input_tokens leaves out what the prompt cache served.
    usage = report["usage"]
    reported_prompt = usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
    assert (reported_prompt, usage["output_tokens"], usage["cache_read_input_tokens"]) == (
        served["prompt"], served["completion"], served["cached"]
    ), (usage, served)  # fmt: skip


# Codex's one notice on a model it has no metadata for: an "error" item that is not one.
_CODEX_NOTICE = "Model metadata for `demo` not found"
_CODEX_RAN_OUT = "Incomplete response returned, reason: max_output_tokens"


@bounded(240)
async def test_codex_completes_a_turn_through_responses(server: ServerHandle, admin, agent_bin, tmp_path):
    block = _readme_block("mlxtrio.config.toml", server)
    profile = re.search(r"<<'EOF'\n(.*?)^EOF$", block, re.M | re.S)
    assert profile, "the README writes Codex's profile with a heredoc"
    codex_home = tmp_path / "codex"
    codex_home.mkdir()
    (codex_home / "mlxtrio.config.toml").write_text(profile.group(1))
    # Codex's own instructions and tools fill six times the demo model's context: a short prompt, two tools.
    (codex_home / "instructions.md").write_text("You are a terse assistant.\n")
    fit = [
        f'model_instructions_file="{codex_home / "instructions.md"}"', "include_environment_context=false",
        "include_permissions_instructions=false", "skills.include_instructions=false",
        "tools.experimental_request_user_input.enabled=false", "features.goals=false", "features.view_image=false",
        # A failure shows at once, not after Codex's retries.
        "model_providers.mlxtrio.request_max_retries=0", "model_providers.mlxtrio.stream_max_retries=0",
    ]  # fmt: skip
    command = [str(agent_bin / "codex"), "exec", "--profile", "mlxtrio", "--json", "--skip-git-repo-check"]
    command += [argument for setting in fit for argument in ("-c", setting)] + ["Say hi."]
    env = _environment(tmp_path / "home", {**_exports(block), "CODEX_HOME": str(codex_home)})
    assert env["MLXTRIO_API_KEY"] == KEY

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
    served = _assert_served_by(before, after, "responses", "/v1/responses")
    # OpenAI's usage: input_tokens counts the cached ones too.
    usage = completed[0]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["cached_input_tokens"]) == (
        served["prompt"], served["completion"], served["cached"]
    ), (usage, served)  # fmt: skip
