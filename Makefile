# The two commands of the README: `make demo` and `make test`. Both set everything up.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stylematrix-installed

export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo test test-fast lint install clean serve system-packages

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stylematrix demo

# The Debian packages the servers and the browser tests use: PostgreSQL (every Prefect server the tests
# and `make serve` start runs on it) and chromium (the gallery tests). Installed when missing and root.
system-packages:
	@missing=""; ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q $$missing; \
	  else echo "make: install the Debian packages:$$missing (apt-get install -y$$missing)"; exit 1; fi; fi

# Everything, as CI runs it, on TEST_WORKERS xdist workers (more than the cores: most of the slow tests wait
# on servers, windows and other processes). A unit of work is a test file, or the worker stack's tests
# together; the longest units go first (tests/conftest.py). `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 4
test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder) --durations=15

# The edit loop (under a minute): tasks/ and the quick adapter tests; no Prefect flows, no model
# kits, no commands in subprocesses, no worker stack, on two xdist workers (one per core: these tests
# compute, they do not wait). Markers: pyproject's [tool.pytest.ini_options].
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not e2e and not flow and not model and not gpu"

serve: $(STAMP) system-packages
	$(BIN)/stylematrix serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) out .pytest_cache
