#!/usr/bin/env bash
# The cluster of docs/CLUSTER.md: three Galera nodes and two app hosts, each in a network
# namespace of its own, and faults on demand. Needs root.
#
#   scripts/cluster.sh {up|down|status|kill HOST|start HOST|partition HOST|heal HOST|delay MS}
#
# Env: STACK_PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${STACK_PYTHON:-.venv/bin/python}  # not $PYTHON: shells often export that one
PYTHONPATH=.:gen exec "$PYTHON" -m seckill_cluster "$@"
