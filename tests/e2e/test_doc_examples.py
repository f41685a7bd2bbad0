"""Every example in the README and the docs runs as written, against the real server.

Code blocks are read from the Markdown itself: curl commands and Python
snippets run with the documented addresses swapped for the test server's;
JSON error examples must match OpenAI's schema; the TOML example must be a
valid config file. A changed example is tested as changed.
"""

from __future__ import annotations

import re
import shutil
import sys
import tomllib
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
    if "/v1/messages" in block:
        assert '"type":"message"' in output
    elif "/v1/embeddings" in block:
        assert '"embedding"' in output
    elif "/v1/" in block and "/v1/models" not in block:
        assert '"choices"' in output
    if '"stream": true' in block:
        assert output.rstrip().endswith("data: [DONE]")


# The commands that run a Python example: the file it names, with the project's environment.
RUNS = {
    match.group(1): block for _, block in _blocks("sh") for match in re.finditer(r"^\.venv/bin/python (\S+\.py)$", block, re.MULTILINE)
}


@pytest.mark.parametrize(("name", "block"), PYTHON, ids=[name for name, _ in PYTHON])
@bounded(120)
async def test_python_examples_run_as_shown(server, tmp_path, name, block):
    """Saved under the name its first line gives, and run by the command the docs give, in a process of its own."""
    named = re.fullmatch(r"# (\S+\.py)", block.splitlines()[0])
    assert named, f"{name}: a Python example starts with '# FILE.py', the file its command runs"
    assert named.group(1) in RUNS, f"{name}: no `.venv/bin/python {named.group(1)}` in the docs, to say which Python has its imports"
    (tmp_path / named.group(1)).write_text(_local(block, server))
    # The tests run in the project's environment (make test): the .venv the command names.
    (tmp_path / ".venv").symlink_to(sys.prefix)
    result = await trio.run_process(
        ["bash", "-c", "set -e\n" + RUNS[named.group(1)]], cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().strip(), "the example printed nothing"


def test_the_environment_the_readme_runs_examples_with_has_the_client():
    """The README says the .venv that make sets up has `openai`: it comes with the test extras, which make installs."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert any(re.match(r"openai\b", requirement) for requirement in extras)
    assert "pip install -e '.[test,vision-light]'" in (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "pip install openai" in readme and "make serve" in readme


def test_the_light_vision_install_pins_what_the_vision_extra_pins():
    """The Makefile installs mlx-vlm without its dependencies: the release pyproject.toml's vision extra names,
    beside the vision-light extra's, and the README says both ways with that release."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pinned = next(requirement for requirement in extras["vision"] if requirement.startswith("mlx-vlm"))
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^MLX_VLM \?= {re.escape(pinned)}$", makefile, re.MULTILINE)
    assert "pip install --no-deps '$(MLX_VLM)'" in makefile
    readme = (ROOT / "README.md").read_text()
    assert f"pip install --no-deps {pinned}" in readme and "pip install 'mlxtrio[vision]'" in readme
    import importlib.metadata

    assert importlib.metadata.version("mlx-vlm") == pinned.split("==")[1]


def test_the_embeddings_install_pins_what_the_embeddings_extra_pins():
    """mlx-embeddings, like mlx-vlm: the Makefile installs the embeddings extra's release without dependencies, and the README says so."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pinned,) = extras["embeddings"]
    assert pinned.startswith("mlx-embeddings==")
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^MLX_EMBEDDINGS \?= {re.escape(pinned)}$", makefile, re.MULTILINE)
    assert "pip install --no-deps '$(MLX_EMBEDDINGS)'" in makefile
    assert f"pip install --no-deps {pinned}" in (ROOT / "README.md").read_text()
    import importlib.metadata

    assert importlib.metadata.version("mlx-embeddings") == pinned.split("==")[1]


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


def test_every_setting_is_in_the_configuration_table():
    """CONFIGURATION.md gives each of Config's environment variables, with its config key, in a row of its table."""
    from mlxtrio._config import _VARIABLES

    rows = [line for line in (ROOT / "docs" / "CONFIGURATION.md").read_text().splitlines() if line.startswith("| ")]
    for key, variable in _VARIABLES.items():
        assert any(f"`{variable}`" in row and f"`{key}`" in row for row in rows), f"{variable} ({key}) has no row in docs/CONFIGURATION.md"
