# Developer entry points. Every variable below can be overridden from the environment or the
# command line, e.g. `make up MARIADB_PORT=3310` or `make run DEMO_ARGS="--users 2000"`.
# Only python3 must exist beforehand: `make run` creates the venv, a private MariaDB (installing
# mariadb-server through apt when missing and run as root) and the services.

BOOTSTRAP_PYTHON ?= python3
VENV ?= .venv
MARIADB_PORT ?= 3307
MARIADB_DIR ?= .run/mariadb
DEMO_ARGS ?=
BENCH_ARGS ?=
export MARIADB_PORT MARIADB_DIR

PY := $(VENV)/bin/python
# Re-install when the dependencies change, not on every run.
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/seckill/v1/*.proto)

.PHONY: venv gen check-gen up down status demo run test lint bench \
	cluster-up cluster-down cluster-status bench-cluster

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

gen: venv
	$(PY) -m grpc_tools.protoc -I protos --python_out=gen --grpc_python_out=gen --pyi_out=gen $(PROTOS)
	@# protoc writes no __init__.py; these make `seckill.v1` a regular package.
	touch gen/seckill/__init__.py gen/seckill/v1/__init__.py
	@# The API reference, from the protos' comments (protoc's descriptor set with source info).
	$(PY) scripts/protodoc.py -I protos -o docs/API.md $(PROTOS)

# CI: the committed gen/ and docs/API.md must be what the committed protos/ generate.
check-gen: gen
	@if [ -n "$$(git status --porcelain -- gen/ docs/API.md)" ]; then \
		echo "gen/ or docs/API.md is out of date with protos/: run 'make gen' and commit them" >&2; \
		git status --porcelain -- gen/ docs/API.md >&2; \
		exit 1; \
	fi

up: venv
	STACK_PYTHON=$(PY) scripts/stack.sh up

down:
	scripts/stack.sh down

# Exit 3 (something stopped) is an answer here, not a failure of make.
status:
	@scripts/stack.sh status || true

# `seckill sale simulate` with the settings (addresses, admin token) of the stack that
# `make up` started, e.g. `make demo DEMO_ARGS="--users 2000 --stock 300 --tries 3"`.
demo: venv
	@test -f .run/stack.env || { echo "the stack is not up: run 'make up' first" >&2; exit 1; }
	. ./.run/stack.env && PYTHONPATH=.:gen $(PY) -m seckill_cli sale simulate $(DEMO_ARGS)

run: up
	$(MAKE) --no-print-directory demo

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .

# The benchmark table of BENCHMARKS.md, on a stack of its own (a few minutes), e.g.
# `make bench BENCH_ARGS="--soak-seconds 0"`.
bench: venv
	$(PY) -m seckill_bench.table $(BENCH_ARGS)

# The cluster of docs/CLUSTER.md (as root): three Galera nodes and two app hosts in network
# namespaces. Faults: scripts/cluster.sh {kill|start|partition|heal} HOST, scripts/cluster.sh
# delay MS. Clients use `. .run/cluster.env`.
cluster-up: venv
	STACK_PYTHON=$(PY) scripts/cluster.sh up

cluster-down:
	STACK_PYTHON=$(PY) scripts/cluster.sh down

cluster-status:
	@STACK_PYTHON=$(PY) scripts/cluster.sh status || true

# The cluster table of BENCHMARKS.md (about 10 minutes; brings its own clusters up and down).
bench-cluster: venv
	STACK_PYTHON=$(PY) scripts/cluster.sh bench $(BENCH_ARGS)
