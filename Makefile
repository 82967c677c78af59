# Homeostat developer entry points. `make demo` and `make test` are the two set-up commands;
# everything else is a building block they use.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE ?= $(or $(HOMEOSTAT_CACHE),$(HOME)/.cache/homeostat)
CLUSTER ?= homeostat
export HOMEOSTAT_CACHE := $(CACHE)

.PHONY: help prereqs venv binaries cluster-up cluster-down lint typecheck layers unit e2e test demo bench chaos \
        chart-crds kind-up kind-e2e kind-down clean

help:
	@echo "make demo     - local cluster + operator + sample service (the main job)"
	@echo "make test     - lint, types, layer contracts, unit and e2e tests (builds the cluster on first run)"
	@echo "make bench    - benchmarks with figures and ratios"
	@echo "make chaos    - the long fault suite (SIGKILL trials, fuzzed specs, HA handover)"
	@echo "make cluster-up / cluster-down - the local control plane alone"
	@echo "make kind-up / kind-e2e / kind-down - a kind cluster and the e2e suite on it, for machines with Docker"

$(BIN)/homeostat: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/homeostat

# System packages (Prometheus, containerd, runc, CNI plugins, buildah, ...) installed when missing,
# and the Go and Python versions checked; under a second when nothing is missing.
prereqs:
	@PY=$(PY) VENV=$(VENV) bash tests/cluster/prereqs.sh

binaries: prereqs
	bash tests/cluster/build.sh

cluster-up: prereqs venv binaries
	$(BIN)/python tests/cluster/local.py up --name $(CLUSTER)

cluster-down: venv
	-for pid in $(CACHE)/demo/*.pid; do test -f "$$pid" && kill $$(cat "$$pid") 2>/dev/null; rm -f "$$pid"; done
	$(BIN)/python tests/cluster/local.py down --name $(CLUSTER)

chart-crds:
	rm -f charts/homeostat/crds/*.yaml
	mkdir -p charts/homeostat/crds
	cp crds/*.yaml charts/homeostat/crds/
	rm -f charts/homeostat/policies/*.yaml
	mkdir -p charts/homeostat/policies
	cp policies/*.yaml charts/homeostat/policies/

lint: venv
	$(BIN)/ruff check operator tests tools
	$(BIN)/ruff format --check operator tests tools

typecheck: venv
	$(BIN)/mypy --strict operator/homeostat

layers: venv
	cd operator && ../$(BIN)/lint-imports --config ../.importlinter

unit: venv
	$(BIN)/pytest -m 'not e2e' -q

e2e: prereqs venv binaries
	$(BIN)/pytest -m e2e -q

test: prereqs lint typecheck layers venv binaries
	$(BIN)/pytest -q -m 'not chaos'

demo: prereqs venv binaries
	$(BIN)/python tests/demo.py

# The long fault suite: 50 SIGKILL trials of rollouts, 10 of scaling and 10 of remediations
# (tests/e2e/test_chaos.py takes a fifth of HOMEOSTAT_CHAOS_TRIALS for each), Slack failing and
# rate-limiting mid-approval, 500 fuzzed specs, 500 mutated objects and 500 malformed Slack clicks
# (tests/e2e/test_bad_input_corpus.py), the HA handover, a partition, a restart of the API server
# and a stopped Prometheus; it ends with a summary table (tests/chaos_report.py). `make test` runs
# the same tests with 10 rollout trials, 2 of scaling and of remediations, and 100 of each corpus.
chaos: prereqs venv binaries
	HOMEOSTAT_CHAOS_TRIALS=50 HOMEOSTAT_FUZZ_EXAMPLES=500 $(BIN)/pytest -m e2e -q -s \
	  tests/e2e/test_rollout_chaos.py tests/e2e/test_chaos.py tests/e2e/test_fuzz.py tests/e2e/test_ha.py \
	  tests/e2e/test_faults.py tests/e2e/test_bad_input_corpus.py \
	  tests/e2e/test_rollout_analysis.py::test_prometheus_down_holds_the_rollout_until_it_returns

bench: prereqs venv binaries
	$(BIN)/python tests/bench/reconcile.py
	$(BIN)/python tests/bench/healing.py
	$(BIN)/python tests/bench/rollback.py
	$(BIN)/pip install --quiet -e '.[dev,bench]'  # pmdarima, for the real load trace it ships
	$(BIN)/python tests/bench/forecast.py

# For machines with Docker (tests/kind/kind.sh, docs/kind.md): a kind cluster from kind-config.yaml,
# the operator and sample-app images built with docker and loaded into it, the chart installed.
kind-up:
	bash tests/kind/kind.sh up

# The e2e suite against that cluster (KUBECONFIG and the image names set by kind.sh).
kind-e2e: venv
	bash tests/kind/kind.sh e2e

kind-down:
	bash tests/kind/kind.sh down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dist build
