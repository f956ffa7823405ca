# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SCENARIO ?= configs/scenarios/scale-1000-mixed.yaml
RUNTIME ?= ray
ARGS ?=

.PHONY: install run test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

## the main job: the default chaos scenario
run: $(STAMP)
	$(BIN)/ats-stress run $(SCENARIO) --runtime $(RUNTIME) $(ARGS)

## the test suite (CI runs exactly this)
test: $(STAMP)
	@command -v prometheus >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && apt-get install -y -qq prometheus >/dev/null) || \
		echo "note: prometheus is not installed; the Prometheus tests will be skipped (apt-get install prometheus)"; }
	$(BIN)/python -m pytest -q -p no:cacheprovider $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
