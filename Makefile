# The README's commands. Each one sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: test serve bench-ipc clean

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

serve: $(VENV)/.installed
	$(VENV)/bin/mlxtrio serve

bench-ipc: $(VENV)/.installed
	$(VENV)/bin/python -m bench.ipc_bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
