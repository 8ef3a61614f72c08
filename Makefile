# amperity-auth-proxy: `make run` and `make test` are the two commands you need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint typecheck pytest rules-test security demo bench soak lock docker-build clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/amperity-proxy run --config config.example.yaml

test: lint typecheck rules-test pytest

lint: install
	$(BIN)/ruff check proxy tests bench
	$(BIN)/ruff format --check proxy tests bench
	$(BIN)/hadolint Dockerfile

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

# promtool comes from Debian's `prometheus` package. Use one on PATH, else unpack the package
# (without installing or starting the service) into .tools/.
PROMTOOL := $(shell command -v promtool 2>/dev/null || echo .tools/usr/bin/promtool)
RULES    := deploy/kubernetes/rules

.tools/usr/bin/promtool:
	mkdir -p .tools/deb
	cd .tools/deb && (apt-get download prometheus 2>/dev/null || (apt-get update -qq && apt-get download prometheus))
	dpkg-deb -x .tools/deb/prometheus_*.deb .tools
	rm -rf .tools/deb

rules-test: $(PROMTOOL)
	$(PROMTOOL) check rules $(RULES)/amperity-proxy.rules.yaml
	$(PROMTOOL) test rules $(RULES)/amperity-proxy.rules.test.yaml

# The hostile-input and fault suites, pip-audit on the lock, slowhttptest when installed, and a
# scorecard. pip-audit needs a vulnerability database; offline, the scorecard says so.
security: install
	@mkdir -p .tools
	-$(BIN)/pip install --quiet pip-audit
	AMPERITY_SCORECARD=.tools/ledger.json $(BIN)/pytest -q tests/hostile tests/test_faults.py; \
	SUITE_FAILED=$$?; export SUITE_FAILED; $(BIN)/python -m tests.hostile.scorecard .tools/ledger.json

# Refresh the pinned, hashed runtime dependency lock the Dockerfile installs from.
lock: install
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

docker-build:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
		docker build -t amperity-auth-proxy:latest . ; \
	elif command -v buildah >/dev/null 2>&1; then \
		buildah bud -t amperity-auth-proxy:latest . ; \
	else \
		echo "docker-build: SKIPPED - no working docker engine or buildah on this machine"; \
	fi

demo: install
	$(BIN)/python -m proxy.demo

# wrk, nginx and curl come from Debian's packages; installed here when missing.
bench: install
	@command -v wrk >/dev/null && command -v nginx >/dev/null && command -v curl >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq wrk nginx-light curl >/dev/null)
	$(PYTHON) -m venv .venv-runtime
	.venv-runtime/bin/pip install --quiet --require-hashes --no-deps -r requirements.lock
	.venv-runtime/bin/pip install --quiet --no-deps --force-reinstall .
	BENCH_PYTHON=.venv-runtime/bin/python $(BIN)/python bench/run.py

# A few minutes of load and churn (slow readers, 100 reloads, fast token rotation) against the
# proxy as a process; figures go to the "Soak" section of bench/RESULTS.md.
soak: install
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .venv-runtime .tools .mypy_cache .ruff_cache .pytest_cache
