# tokenrelay: `make run` starts everything on one machine, `make test` checks everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser js run test test-fast lint unit integration bench clean soak

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,local]'
	touch $(STAMP)

run: install
	$(BIN)/tokenrelay dev

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Debian's Chromium and ChromeDriver for the demo page's browser test.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver (Debian packages) for the browser test"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; }

# The JavaScript clients and example front ends the tests drive (the `ai` package, the
# Durable Streams suite, ...): every folder under tests/js/ and examples/ with a committed
# package-lock.json, installed exactly from it (npm ci) when the lock file changed.
JS_DIRS := $(patsubst %/package-lock.json,%,$(wildcard tests/js/*/package-lock.json examples/*/package-lock.json))
JS_STAMPS := $(addsuffix /node_modules/.installed,$(JS_DIRS))
js: $(JS_STAMPS)

%/node_modules/.installed: %/package-lock.json
	cd $* && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# pytest exits 5 when it ran no test: that fails here like any other failure.
test: lint browser js
	$(BIN)/python -m pytest

# Everything but the real-model and browser tests (seconds, not minutes).
test-fast: lint js
	$(BIN)/python -m pytest -m "not e2e"

# tokenrelay beside resumable-stream and resumable-sse (ops/bench/PEERS.md); the peers get
# their own .venv-peers (created on first run: they need redis>=6.2, arq redis<6).
.PHONY: bench-peers
bench-peers: install
	$(BIN)/python ops/bench/peers.py

# The chaos test (random resumes, a worker SIGKILL, a Redis restart) 20 times in a row: run
# before calling a reliability change done. Stops at the first failure, naming the run.
SOAK_RUNS ?= 20
soak: install
	@log=$$(mktemp); for i in $$(seq 1 $(SOAK_RUNS)); do \
	  $(BIN)/python -m pytest tests/integration/test_chaos.py -q -s -p no:cacheprovider \
	    >"$$log" 2>&1 || { cat "$$log"; echo "chaos run $$i of $(SOAK_RUNS) failed"; exit 1; }; \
	  echo "run $$i: $$(grep -E '^chaos' "$$log")"; \
	done; rm -f "$$log"; echo "chaos: $(SOAK_RUNS) runs in a row, all passed"

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install
	$(BIN)/python -m pytest tests/integration

# The benchmark suite: each figure beside its baseline, then the scale-out table.
bench: install
	$(BIN)/python ops/bench/run.py
	$(BIN)/python ops/bench/scale.py

clean:
	rm -rf $(VENV) $(addsuffix /node_modules,$(JS_DIRS)) .pytest_cache .mypy_cache .ruff_cache .hypothesis
