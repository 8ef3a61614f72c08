# amperity-auth-proxy: `make run` and `make test` are the two commands you need.
#
# Two virtual environments: `make run` (and `make demo`, `make fake`) use .venv-run, the runtime
# dependencies only, pinned and hashed from requirements.lock, with pip's progress shown; the
# proxy runs from this checkout (PYTHONPATH), so nothing is built. `make test` and the other
# developer targets use .venv, the project with its dev extras.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNVENV ?= .venv-run
RUNPY  := PYTHONPATH=$(CURDIR) $(RUNVENV)/bin/python
RUNSTAMP ?= $(RUNVENV)/.installed
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' proxy/__init__.py)
CHECK_PYTHON := $(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'

.PHONY: install runtime run ready test lint typecheck pytest rules-test security demo demo-serve fake bench bench-compare bench-tls-upload soak lock dist sbom docker-build clean

install: $(STAMP)

# The dev dependencies come from a hashed lock too (requirements-dev.lock), so CI can't drift;
# the project itself is installed editable on top, without resolving anything.
$(STAMP): pyproject.toml requirements-dev.lock
	@$(CHECK_PYTHON)
	@echo "installing the locked dev dependencies into $(VENV) (a minute or two the first time)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off --disable-pip-version-check --require-hashes --no-deps \
		-r requirements-dev.lock | grep -E '^(Successfully|ERROR)' || true
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@$(BIN)/python -c 'import proxy, pytest, redis, opentelemetry.sdk' \
		|| (echo "install failed: see pip's output above"; exit 1)
	touch $(STAMP)

runtime: $(RUNSTAMP)

$(RUNSTAMP): requirements.lock
	@$(CHECK_PYTHON)
	@echo "installing the runtime dependencies (requirements.lock) into $(RUNVENV)"
	$(PYTHON) -m venv $(RUNVENV)
	$(RUNVENV)/bin/pip install --disable-pip-version-check --require-hashes --no-deps -r requirements.lock
	touch $(RUNSTAMP)

run: runtime
	$(RUNPY) -m proxy run --config config.example.yaml

# The demo and the standalone fake also need trustme (the fake's throwaway CA): pyproject's
# `demo` extra, added to the runtime environment on first use.
$(RUNVENV)/.demo: $(RUNSTAMP)
	$(RUNVENV)/bin/pip install --disable-pip-version-check 'trustme>=1.1'
	touch $@

# Waits until the proxy `make run` started answers /readyz (see the README's legacy-tool snippet).
ready:
	@PYTHONPATH=$(CURDIR) $(PYTHON) -m proxy.cli.readiness --timeout 120

test: lint typecheck rules-test pytest

lint: install
	$(BIN)/ruff check proxy tests bench tools
	$(BIN)/ruff format --check proxy tests bench tools
	$(BIN)/hadolint Dockerfile
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

# promtool comes from Debian's `prometheus` package: one on PATH, else the package unpacked
# (not installed, no service started) into .tools/ when apt-get can fetch it. Without either,
# the check is skipped with one line saying what to install; in CI (CI=true) it is required.
RULES    := deploy/kubernetes/rules

rules-test:
	@$(PYTHON) tools/promtool.py $(RULES)

# The hostile-input and fault suites, pip-audit on the lock, slowhttptest when installed, and a
# scorecard. pip-audit needs a vulnerability database; offline, the scorecard says so.
security: install
	@mkdir -p .tools
	-$(BIN)/pip install --quiet pip-audit
	AMPERITY_SCORECARD=.tools/ledger.json $(BIN)/pytest -q tests/hostile tests/test_faults.py; \
	SUITE_FAILED=$$?; export SUITE_FAILED; $(BIN)/python -m tests.hostile.scorecard .tools/ledger.json

# Refresh both hashed locks: the runtime one the Dockerfile and `make run` install (with the
# image's extras), and the dev one `make test` and CI install.
LOCK := $(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
	--no-emit-index-url --no-emit-find-links
lock: install
	$(LOCK) --extra redis --extra otel -o requirements.lock pyproject.toml
	$(LOCK) --extra dev --extra redis --extra otel --extra testing -o requirements-dev.lock pyproject.toml

# sdist and wheel into dist/ (the version is proxy.__version__, the one place it is written).
dist: install
	rm -rf dist build  # a stale build/ would leak old modules into the wheel
	$(BIN)/python -m build --no-isolation --outdir dist .

# A CycloneDX SBOM of what the image installs (requirements.lock) and of the dev tools.
sbom: install
	$(BIN)/cyclonedx-py requirements --pyproject pyproject.toml --mc-type application \
		--output-reproducible --of JSON -o sbom.json requirements.lock
	$(BIN)/cyclonedx-py requirements --pyproject pyproject.toml --mc-type application \
		--output-reproducible --of JSON -o sbom-dev.json requirements-dev.lock

docker-build:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
		docker build --build-arg VERSION=$(VERSION) -t amperity-auth-proxy:$(VERSION) . ; \
	elif command -v buildah >/dev/null 2>&1; then \
		buildah bud --build-arg VERSION=$(VERSION) -t amperity-auth-proxy:$(VERSION) . ; \
	else \
		echo "docker-build: SKIPPED - no working docker engine or buildah on this machine"; \
	fi

demo: $(RUNVENV)/.demo
	$(RUNPY) -m proxy.cli.demo

# The demo, kept running: the fake Amperity and the proxy in front of it, for your own requests.
demo-serve: $(RUNVENV)/.demo
	$(RUNPY) -m proxy.cli.demo --serve

# The bundled fake Amperity API on its own (TLS, its own CA), for your own integration tests.
fake: $(RUNVENV)/.demo
	$(RUNPY) -m proxy.fake_amperity

# wrk, nginx and curl come from Debian's packages; installed here when missing.
bench: install
	@command -v wrk >/dev/null && command -v nginx >/dev/null && command -v curl >/dev/null && command -v redis-server >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq wrk nginx-light curl redis-server >/dev/null)
	$(PYTHON) -m venv .venv-runtime
	.venv-runtime/bin/pip install --quiet --require-hashes --no-deps -r requirements.lock
	.venv-runtime/bin/pip install --quiet --no-deps --force-reinstall .
	BENCH_PYTHON=.venv-runtime/bin/python $(BIN)/python bench/run.py

# The proxy's code at several revisions, alternating in front of one nginx (is a refactor free?):
#   make bench-compare REVS="HEAD~5 HEAD" [ROUNDS=9]   (3 rounds swing +-15% on a noisy machine)
bench-compare: install
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null)
	$(PYTHON) -m venv .venv-runtime
	.venv-runtime/bin/pip install --quiet --require-hashes --no-deps -r requirements.lock
	BENCH_PYTHON=.venv-runtime/bin/python $(BIN)/python bench/compare.py $(if $(ROUNDS),--rounds $(ROUNDS)) $(REVS)

# Upload throughput through the TLS listener (listen.tls) at several revisions, side by side:
#   make bench-tls-upload REVS="HEAD~1 HEAD" [ROUNDS=3]   (curl from Debian's packages)
bench-tls-upload: install
	@command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq curl >/dev/null)
	$(PYTHON) -m venv .venv-runtime
	.venv-runtime/bin/pip install --quiet --require-hashes --no-deps -r requirements.lock
	BENCH_PYTHON=.venv-runtime/bin/python $(BIN)/python bench/tls_upload.py $(if $(ROUNDS),--rounds $(ROUNDS)) $(REVS)

# A few minutes of load and churn (slow readers, 100 reloads, fast token rotation) against the
# proxy as a process; figures go to the "Soak" section of bench/RESULTS.md.
soak: install
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) $(RUNVENV) .venv-runtime .tools .mypy_cache .ruff_cache .pytest_cache dist build sbom.json sbom-dev.json
