# The two commands a new machine needs: `make run` and `make test`. Each installs what it needs
# into .venv inside the checkout (re-installed when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SPEC ?= examples/iris.yaml

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

.PHONY: install build run test lint typecheck unit k8s
install: $(BIN)/.installed

# The compiled dataplane modules (setup.py), rebuilt in place when their .py or .pxd changed
# (a no-op when up to date). ZEROSERVE_PURE_PYTHON=1 skips them.
build: $(BIN)/.installed
	$(BIN)/python setup.py -q build_ext --inplace

run: build
	$(BIN)/zeroserve up $(SPEC)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: build
	$(BIN)/pytest -q

# The Kubernetes tests against a real etcd + kube-apiserver + kube-controller-manager, built
# from their Go modules once and cached in ~/.cache/zeroserve/k8s (about 17 minutes the first time).
k8s: build
	bash tests/k8s/run-real.sh

test: lint typecheck unit k8s
