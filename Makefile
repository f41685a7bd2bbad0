# The README's commands. Each one sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
# The agent CLIs (Claude Code, Codex) that tests/e2e/test_agents.py runs, pinned by their lock file.
AGENTS ?= tests/e2e/agents
# Vision, light: mlx-vlm without the dependencies serving does not use (README: "Vision models");
# the same pin as pyproject.toml's vision extra (tests/e2e/test_doc_examples.py checks).
MLX_VLM ?= mlx-vlm==0.7.10
# Encoder embedding models: mlx-embeddings the same way (it needs mlx-vlm and what mlx-lm brings); pyproject.toml's embeddings extra's pin.
MLX_EMBEDDINGS ?= mlx-embeddings==0.1.0
# The browser tests/web drives (Playwright cannot download its own here): Debian's Chromium, installed where missing.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: test serve bench-ipc agents clean

test: $(VENV)/.installed $(AGENTS)/node_modules/.installed $(CHROMIUM)
	MLXTRIO_CHROMIUM=$(CHROMIUM) $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

serve: $(VENV)/.installed
	$(VENV)/bin/mlxtrio serve

bench-ipc: $(VENV)/.installed
	$(VENV)/bin/python -m bench.ipc_bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[test,vision-light]'
	$(VENV)/bin/python -m pip install --no-deps '$(MLX_VLM)'
	$(VENV)/bin/python -m pip install --no-deps '$(MLX_EMBEDDINGS)'
	touch $@

agents: $(AGENTS)/node_modules/.installed

# Without refreshing the package lists first where they already know chromium.
$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

$(AGENTS)/node_modules/.installed: $(AGENTS)/package-lock.json
	npm ci --prefix $(AGENTS) --no-audit --no-fund
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis $(AGENTS)/node_modules
