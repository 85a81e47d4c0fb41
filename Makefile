# splitinfer — operator entry points. Every target works on a fresh Debian machine as root.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard proto/splitinfer/v1/*.proto proto/splitinfer/inference/*.proto)
PROTO_STAMP := splitinfer/v1/.generated
DEBIAN_PACKAGES := etcd-server graphviz

.PHONY: install proto docs test test-unit test-integration agent-test lint buf-lint demo bench bench-quick clean help \
	cluster-up cluster-status cluster-down certs fuzz train-planner

help:
	@echo "make demo   - install if needed, then run the split-inference demo"
	@echo "make test   - install if needed, then run unit and integration tests"
	@echo "make lint   - ruff (lint + format check), mypy, and buf lint when npx is available"
	@echo "make proto  - regenerate Python code from proto/"
	@echo "make bench-quick / make bench - benchmarks (tiny / full)"
	@echo "make agent-test - the edge agent in a venv without torch (the [agent] extra) against real nodes"
	@echo "make train-planner - train the learned planner's policy on the simulator (a few minutes)"

NODE_STAMP := examples/node/node_modules/.installed

install: $(STAMP) $(PROTO_STAMP) $(NODE_STAMP)

# The Node.js example client's packages (tested in CI); Node.js itself from Debian where it is missing.
$(NODE_STAMP): examples/node/package.json examples/node/package-lock.json
	@command -v npm >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	cd examples/node && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

$(STAMP): pyproject.toml
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,dev,demo]'
	touch $(STAMP)

# Generated code is written into splitinfer/v1/ (git-ignored) and never edited by hand.
proto: $(STAMP)
	rm -f $(PROTO_STAMP)
	$(MAKE) $(PROTO_STAMP)

$(PROTO_STAMP): $(PROTO_SRC) $(STAMP)
	rm -f splitinfer/v1/*_pb2*.py splitinfer/v1/*_pb2*.pyi splitinfer/inference/*_pb2*.py splitinfer/inference/*_pb2*.pyi
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)
	touch $(PROTO_STAMP)

# docs/api.md is generated from the proto comments; a unit test fails when it is stale.
docs: install
	$(PY) scripts/gen_api_docs.py

test: install
	$(PY) -m pytest tests

test-unit: install
	$(PY) -m pytest tests/unit

test-integration: install
	$(PY) -m pytest tests/integration

# The agent in its own venv: the [agent] extra only, torch not importable (built once under .cache/).
agent-test: install
	$(PY) scripts/agent_venv.py
	$(PY) -m pytest tests/integration/test_agent_no_torch.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	@$(MAKE) --no-print-directory buf-lint

# buf is fetched from the npm registry; skipped with a notice where npx is not installed.
buf-lint:
	@if command -v npx >/dev/null 2>&1; then \
	  (cd proto && npx --yes @bufbuild/buf lint) && echo "buf lint: clean"; \
	else echo "buf lint: skipped (npx not found)"; fi

demo: install
	$(PY) -m splitinfer.cli demo

# The learned planner's policy, trained on the scenario simulator (one CPU core, a few minutes); the committed
# policy is what tests, benchmarks and the demo use until this replaces it.
train-planner: install
	$(PY) -m splitinfer.planner.training --out splitinfer/planner/policies/resnet18-phone.safetensors

# Smoke run at tiny sizes (CI): the scripts must not rot. Results go to *-quick.json (git-ignored).
bench-quick: install
	$(PY) benchmarks/codecs.py --quick --out benchmarks/results/codecs-quick.json
	$(PY) benchmarks/divider.py --quick --out benchmarks/results/divider-quick.json
	$(PY) benchmarks/pipeline.py --quick --out benchmarks/results/pipeline-quick.json
	$(PY) benchmarks/runtimes.py --quick --out benchmarks/results/runtimes-quick.json
	$(PY) benchmarks/planner.py --quick --out benchmarks/results/planner-quick.json
	$(PY) benchmarks/load.py --quick --out benchmarks/results/load-quick.json
	$(PY) benchmarks/adaptation.py --quick --out benchmarks/results/adaptation-quick.json
	$(PY) benchmarks/redivision.py --quick --out benchmarks/results/redivision-quick.json
	$(PY) benchmarks/detection.py --quick --out benchmarks/results/detection-quick.json

# Full run on this machine; docs/benchmarks.md is rewritten from the results.
bench: install
	$(PY) benchmarks/codecs.py --out benchmarks/results/codecs.json
	$(PY) benchmarks/divider.py --out benchmarks/results/divider.json
	$(PY) benchmarks/pipeline.py --out benchmarks/results/pipeline.json
	$(PY) benchmarks/runtimes.py --out benchmarks/results/runtimes.json
	$(PY) benchmarks/planner.py --out benchmarks/results/planner.json
	$(PY) benchmarks/load.py --out benchmarks/results/load.json
	$(PY) benchmarks/adaptation.py --out benchmarks/results/adaptation.json
	$(PY) benchmarks/redivision.py --out benchmarks/results/redivision.json
	$(PY) benchmarks/detection.py --out benchmarks/results/detection.json
	$(PY) benchmarks/report.py

# A cluster on this machine: etcd, the front door and server nodes as background processes (see
# deploy/cluster.json); CLUSTER_DIR holds their logs, pid state, pool and results.
CLUSTER_DIR ?= run/cluster
CLUSTER_CONFIG ?= deploy/cluster.json

cluster-up: install
	$(PY) -m splitinfer.cluster up --config $(CLUSTER_CONFIG) --run-dir $(CLUSTER_DIR)

cluster-status: install
	$(PY) -m splitinfer.cluster status --run-dir $(CLUSTER_DIR)

cluster-down: install
	$(PY) -m splitinfer.cluster down --run-dir $(CLUSTER_DIR)

# The fuzz tests at length (CI runs a bounded number of examples of the same tests).
fuzz: install
	SPLITINFER_FUZZ_PROFILE=fuzz $(PY) -m pytest tests/integration/test_fuzz.py tests/unit/test_codecs_properties.py

# A development CA, server/cluster/admin certificates and device/cluster/admin tokens (see docs/reliability.md).
CERTS_DIR ?= certs
certs: install
	$(PY) -m splitinfer.security.certs --out $(CERTS_DIR)

clean:
	rm -rf $(VENV) splitinfer/v1/*_pb2*.py splitinfer/v1/*_pb2*.pyi splitinfer/inference/*_pb2*.py splitinfer/inference/*_pb2*.pyi $(PROTO_STAMP) .pytest_cache .mypy_cache .ruff_cache
