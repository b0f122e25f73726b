# The two commands of the README: `make quickstart` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S ?= 0.2

.PHONY: install quickstart test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,optuna,hyperopt]'
	touch $@

quickstart: install
	$(BIN)/rmm run configs/quickstart.yaml

# Tests never reach a model hub: every model they use is built locally or shipped by a package.
test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
