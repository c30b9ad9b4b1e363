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

.PHONY: venv lock gen check-gen up down status demo run test lint bench \
	cluster-up cluster-down cluster-status bench-cluster galera-writers chaos

venv: $(STAMP)

# The exact versions of requirements.lock, also for the build backend (PIP_CONSTRAINT, unlike
# -c, reaches pip's isolated build environment).
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(BOOTSTRAP_PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=requirements.lock $(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Re-pins requirements.lock within pyproject.toml's ranges, keeping the pins that still fit;
# `make lock LOCK_ARGS=--upgrade` moves every pin to the newest version allowed.
LOCK_ARGS ?=
lock: venv
	CUSTOM_COMPILE_COMMAND="make lock" $(PY) -m piptools compile --quiet --extra dev \
		--strip-extras --all-build-deps --allow-unsafe --no-emit-index-url \
		--no-emit-find-links -o requirements.lock $(LOCK_ARGS) pyproject.toml

gen: venv
	@# Messages, gRPC stubs and their .pyi type stubs (mypy-protobuf), see scripts/protogen.py.
	$(PY) scripts/protogen.py gen
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
	$(PY) -m seckill_stack up

down: venv
	$(PY) -m seckill_stack down

# Exit 3 (something not serving) is an answer here, not a failure of make.
status: venv
	@$(PY) -m seckill_stack status || true

# `seckill sale simulate` with the settings (addresses, admin token) of the stack that
# `make up` started, e.g. `make demo DEMO_ARGS="--users 2000 --stock 300 --tries 3"`.
demo: venv
	@test -f .run/stack.env || { echo "the stack is not up: run 'make up' first" >&2; exit 1; }
	. ./.run/stack.env && PYTHONPATH=.:gen $(PY) -m seckill_cli sale simulate $(DEMO_ARGS)

run: up
	$(MAKE) --no-print-directory demo

test: venv
	$(PY) -m pytest -q

# Randomized fault schedules (docs/CHAOS.md): CHAOS_SEEDS runs of tests/faults/test_chaos.py, seeds
# CHAOS_FIRST_SEED on, about a minute each; `make chaos CHAOS_SEEDS=1 CHAOS_FIRST_SEED=17`
# replays seed 17's schedule. `make test` runs three fixed seeds.
CHAOS_SEEDS ?= 20
CHAOS_FIRST_SEED ?= 1
chaos: venv
	SECKILL_CHAOS_SEEDS=$(CHAOS_SEEDS) SECKILL_CHAOS_FIRST_SEED=$(CHAOS_FIRST_SEED) \
		$(PY) -m pytest -q -s -p no:cacheprovider tests/faults/test_chaos.py -k test_chaos_schedule

# npm's tools (buf) from package-lock.json into ./node_modules. --ignore-scripts: buf's
# install script only caches the binary that its platform package already ships.
NODE_STAMP := node_modules/.installed
$(NODE_STAMP): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# Python style and types (ruff, mypy: settings in pyproject.toml), and the protos' style
# (buf lint: buf.yaml).
lint: venv $(NODE_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) scripts/protogen.py --imports-only build/protodeps
	node_modules/.bin/buf lint

# The benchmark table of BENCHMARKS.md, on a stack of its own (a few minutes), e.g.
# `make bench BENCH_ARGS="--soak-seconds 0"`.
bench: venv
	$(PY) -m seckill_bench.suite $(BENCH_ARGS)

# The cluster of docs/CLUSTER.md (as root): three Galera nodes and two app hosts in network
# namespaces. Faults: scripts/cluster.sh {kill|start|partition|heal} HOST, scripts/cluster.sh
# delay MS. Clients use `. .run/cluster.env`.
cluster-up: venv
	STACK_PYTHON=$(PY) scripts/cluster.sh up

cluster-down:
	STACK_PYTHON=$(PY) scripts/cluster.sh down

# Exit 3 (not up) is an answer here, not a failure of make.
cluster-status:
	@STACK_PYTHON=$(PY) scripts/cluster.sh status || true

# Two Galera writers selling one sale, GALERA_ROUNDS rounds (as root; about 5 minutes for 30,
# bringing its own cluster up and down): 0 rounds may break a promise. docs/CLUSTER.md.
GALERA_ROUNDS ?= 30
galera-writers: venv
	GALERA_WRITER_ROUNDS=$(GALERA_ROUNDS) $(PY) -m pytest -q -s tests/faults/test_galera_writers.py

# The cluster table of BENCHMARKS.md (about 5 minutes; brings its own clusters up and down).
bench-cluster: venv
	STACK_PYTHON=$(PY) scripts/cluster.sh bench $(BENCH_ARGS)
