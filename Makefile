# The two commands of the README: `make quickstart` and `make test`. Both build .venv first. `make test-fast` is
# the seconds-long tier for development (no Ray, no tiny models, no model fits).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S ?= 0.2

.PHONY: install quickstart test test-fast test-slow clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,optuna,hyperopt]'
	touch $@

quickstart: install
	$(BIN)/rmm run configs/quickstart.yaml

# Tests never reach a model hub: every model they use is built locally or shipped by a package.
PYTEST := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest
# The tiers (markers set in tests/conftest.py): the fast one, then its complement, so each test runs once.
FAST := not ray and not slow

test: install lint test-fast test-slow

test-fast: install
	$(PYTEST) -m "$(FAST)"

test-slow: install
	$(PYTEST) -m "not ($(FAST))"

# Lint and types, configured in pyproject.toml: ruff over all Python in the repository, mypy over the package.
.PHONY: lint
lint: install
	$(BIN)/ruff check rmm tests bench jobs
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs
