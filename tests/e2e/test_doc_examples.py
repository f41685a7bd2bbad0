"""Every example in the README and the docs runs as written, against the real server.

Code blocks are read from the Markdown itself: curl commands and Python
snippets run with the documented addresses swapped for the test server's;
JSON error examples must match OpenAI's schema; the TOML example must be a
valid config file. A changed example is tested as changed.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest
import trio

from mlxtrio._config import _read_config_file

from ..helpers import bounded

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        for number, match in enumerate(_BLOCK.finditer(document.read_text())):
            if match.group(1) == language:
                found.append((f"{document.name}#{number}", match.group(2)))
    return found


def _local(text: str, server) -> str:  # noqa: ANN001
    return text.replace("http://127.0.0.1:11440", server.openai_url).replace("http://127.0.0.1:11441", server.admin_url)


CURL = [(name, block) for name, block in _blocks("sh") if block.lstrip().startswith("curl")]
PYTHON = _blocks("python")


def test_the_docs_have_examples():
    assert len(CURL) >= 2 and len(PYTHON) >= 1 and _blocks("toml") and _blocks("json")


@pytest.mark.parametrize(("name", "block"), CURL, ids=[name for name, _ in CURL])
@bounded(120)
async def test_curl_examples(server, name, block):
    assert shutil.which("curl"), "the examples use curl"
    result = await trio.run_process(["bash", "-c", "set -e\n" + _local(block, server)], capture_stdout=True, capture_stderr=True, check=False)
    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert '"error"' not in output, output[-500:]
    assert output.strip(), "the example printed nothing"
    if "/v1/" in block and "/v1/models" not in block:
        assert '"choices"' in output
    if '"stream": true' in block:
        assert output.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize(("name", "block"), PYTHON, ids=[name for name, _ in PYTHON])
@bounded(120)
async def test_python_examples(server, name, block):
    printed = io.StringIO()

    def run() -> None:
        with contextlib.redirect_stdout(printed):
            exec(compile(_local(block, server), name, "exec"), {"__name__": "__example__"})  # noqa: S102

    await trio.to_thread.run_sync(run)
    assert printed.getvalue().strip()


def test_json_error_examples_are_openai_errors(openapi):
    import json

    errors = [json.loads(block) for _, block in _blocks("json") if block.lstrip().startswith('{"error"')]
    assert errors
    for error in errors:
        openapi.validate(error, "ErrorResponse")


def test_toml_examples_are_valid_config_files(tmp_path):
    for name, block in _blocks("toml"):
        path = tmp_path / "example.toml"
        path.write_text(block)
        settings, models = _read_config_file(path)
        assert settings and models, name
