# The two commands of the README: `make demo` and `make test`. Both set everything up.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stylematrix-installed

export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo test test-fast lint install clean serve

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stylematrix demo

# Everything, as CI runs it (about 6 minutes on two cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The edit loop (under a minute): tasks/ and the quick adapter tests; no Prefect flows, no model
# kits, no commands in subprocesses, no worker stack. Markers: pyproject's [tool.pytest.ini_options].
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not e2e and not flow and not model and not gpu"

serve: $(STAMP)
	$(BIN)/stylematrix serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) out .pytest_cache
