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

.PHONY: install build run test lint typecheck unit k8s k8s-system
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

# The Kubernetes tests against a real etcd + kube-apiserver + kube-controller-manager (and
# kube-proxy), built from their Go modules once and cached in ~/.cache/zeroserve/k8s (about 17
# minutes the first time), then the end-to-end traffic tests, which run pods in network
# namespaces: they need root and ip/iptables, installed here when missing (CI is a fresh machine).
k8s: build k8s-system
	bash tests/k8s/run-real.sh

k8s-system:
	@command -v ip >/dev/null && command -v iptables >/dev/null && command -v ip6tables >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables; }
	@ip netns list >/dev/null && iptables -t nat -S >/dev/null

test: lint typecheck unit k8s
