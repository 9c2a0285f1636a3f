# Shoal's developer entry points. `make demo` runs the main job on a local
# Postgres + a kind cluster; `make test` runs the whole test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: venv cluster crds lint test bench demo clean

$(BIN)/shoal: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

venv: $(BIN)/shoal

cluster: venv  ## docker engine, kind, helm, node image, Shoal's image (built or found in the cache)
	$(BIN)/python -m tests.cluster build

crds: venv  ## the CRDs (crds/, charts/shoal/crds/) from the models, then docs/reference.md
	$(BIN)/python hack/gen_crds.py
	$(BIN)/python hack/gen_docs.py

lint: venv  ## Python (ruff, mypy --strict) and Dockerfile
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

test: cluster lint  ## the whole suite: unit, Postgres, Kubernetes end-to-end
	$(BIN)/python -m pytest -q -ra --durations=15

bench: venv  ## Shoal vs PgQueuer, procrastinate and sayiir on one Postgres
	$(BIN)/python -m bench.run

demo: cluster  ## Postgres + kind + operator + a sample pool and workflow (DEMO_ARGS=--once: no Ctrl-C wait)
	$(BIN)/python -m tests.cluster demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
