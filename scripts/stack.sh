#!/usr/bin/env bash
# Runs the whole stack on this machine, in the background: a private MariaDB (unless
# SECKILL_MYSQL_URL names a server), then the product, activity and order services.
#
#   scripts/stack.sh {up|down|status}
#
# Env: SECKILL_MYSQL_URL, SECKILL_ADMIN_TOKEN, SECKILL_{PRODUCT,ACTIVITY,ORDER}_ADDR (see
# docs/SETUP.md), MARIADB_DIR (.run/mariadb), MARIADB_PORT (3307), WAIT_TIMEOUT (60 s),
# STACK_PYTHON (.venv/bin/python). State lives in .run/: stack.env (the settings the running
# stack uses; `down` and the demo read it), admin_token, logs/<svc>.log, pids/<svc>.pid.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=.run
ENV_FILE=$RUN/stack.env
SERVICES=(product activity order)  # start order: activity and order call product
PYTHON=${STACK_PYTHON:-.venv/bin/python}  # not $PYTHON: shells often export that one
WAIT_TIMEOUT=${WAIT_TIMEOUT:-60}
STOP_TIMEOUT=30  # seconds; above the services' default shutdown grace of 5 s

die() { echo "stack.sh: $*" >&2; exit 1; }

# Single-quoted for sh, so the Makefile's /bin/sh can source stack.env too.
shquote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# The pid of service $1 if it is alive and still our service (pids get reused).
service_pid() {
  local pid
  [[ -s $RUN/pids/$1.pid ]] || return 1
  pid=$(<"$RUN/pids/$1.pid")
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-m $1_svc" || return 1
  echo "$pid"
}

any_running() {
  local svc
  for svc in "${SERVICES[@]}"; do service_pid "$svc" >/dev/null && return 0; done
  return 1
}

addr_of() { local var="SECKILL_${1^^}_ADDR"; echo "${!var:-?}"; }

# Whether something accepts TCP connections on host:port $1.
listening() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

private_db() { DIR=$MARIADB_DIR PORT=$MARIADB_PORT scripts/mariadb.sh "$@"; }

# Settings of a new stack: from the environment, with defaults.
choose_settings() {
  SECKILL_PRODUCT_ADDR=${SECKILL_PRODUCT_ADDR:-127.0.0.1:50051}
  SECKILL_ACTIVITY_ADDR=${SECKILL_ACTIVITY_ADDR:-127.0.0.1:50052}
  SECKILL_ORDER_ADDR=${SECKILL_ORDER_ADDR:-127.0.0.1:50053}
  MARIADB_DIR=${MARIADB_DIR:-$RUN/mariadb}
  MARIADB_PORT=${MARIADB_PORT:-3307}
  STACK_PRIVATE_DB=0
  # Our own URL counts as unset: a shell that sourced stack.env still gets its DB started.
  if [[ -z ${SECKILL_MYSQL_URL:-} || $SECKILL_MYSQL_URL == "$(private_db url)" ]]; then
    STACK_PRIVATE_DB=1
    SECKILL_MYSQL_URL=$(private_db url)
  fi
  if [[ -z ${SECKILL_ADMIN_TOKEN:-} ]]; then
    if [[ ! -s $RUN/admin_token ]]; then
      # Generated once and kept, so scripts and shells that saved it keep working.
      (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$RUN/admin_token")
    fi
    SECKILL_ADMIN_TOKEN=$(<"$RUN/admin_token")
  fi
  local var
  (
    umask 077 && rm -f "$ENV_FILE"  # it holds the admin token
    {
      echo "# Settings of the stack started by scripts/stack.sh up; removed by down."
      for var in SECKILL_MYSQL_URL SECKILL_ADMIN_TOKEN SECKILL_PRODUCT_ADDR \
        SECKILL_ACTIVITY_ADDR SECKILL_ORDER_ADDR STACK_PRIVATE_DB MARIADB_DIR MARIADB_PORT; do
        echo "export $var=$(shquote "${!var}")"
      done
    } >"$ENV_FILE"
  )
}

start_service() {
  local svc=$1 addr pid
  if pid=$(service_pid "$svc"); then echo "stack.sh: $svc already running (pid $pid)"; return; fi
  addr=$(addr_of "$svc")
  # Otherwise the health wait could be answered by a server that is not ours.
  listening "$addr" && die "$addr ($svc) is already in use by another process; stop it or" \
    "set SECKILL_${svc^^}_ADDR"
  # setsid: its own session, so a Ctrl-C in make or the end of this shell leaves it running.
  PYTHONPATH=.:gen${PYTHONPATH:+:$PYTHONPATH} setsid nohup "$PYTHON" -m "${svc}_svc" \
    </dev/null >>"$RUN/logs/$svc.log" 2>&1 &
  echo $! >"$RUN/pids/$svc.pid"
  echo "stack.sh: started $svc (pid $!) on $addr, log $RUN/logs/$svc.log"
}

up() {
  [[ -x $PYTHON ]] || die "$PYTHON not found: run 'make venv' first"
  mkdir -p "$RUN/logs" "$RUN/pids"
  if any_running && [[ -f $ENV_FILE ]]; then
    # Keep what the running services were given, whatever this shell has.
    # shellcheck source=/dev/null
    . "$ENV_FILE"
  else
    choose_settings
  fi
  export SECKILL_MYSQL_URL SECKILL_ADMIN_TOKEN SECKILL_PRODUCT_ADDR SECKILL_ACTIVITY_ADDR \
    SECKILL_ORDER_ADDR
  if ((STACK_PRIVATE_DB)); then private_db start; fi
  local svc pids=() addrs=()
  for svc in "${SERVICES[@]}"; do
    start_service "$svc"
    pids+=(--pid "$(<"$RUN/pids/$svc.pid")")
    addrs+=("$(addr_of "$svc")")
  done
  if ! PYTHONPATH=.:gen${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" -m seckill_cli.wait_serving \
    "${addrs[@]}" "${pids[@]}" --timeout "$WAIT_TIMEOUT"; then
    for svc in "${SERVICES[@]}"; do
      echo "--- last lines of $RUN/logs/$svc.log:" >&2
      # Lines cut short: a JSON line with a traceback can run to many kilobytes.
      tail -n 5 "$RUN/logs/$svc.log" | cut -c1-400 >&2 || true
    done
    die "the stack is not serving; see the logs in $RUN/logs/, then run 'make down'"
  fi
}

down() {
  local svc pid pids=() deadline=$((SECONDS + STOP_TIMEOUT))
  # shellcheck source=/dev/null
  [[ -f $ENV_FILE ]] && . "$ENV_FILE"
  for svc in "${SERVICES[@]}"; do
    if pid=$(service_pid "$svc"); then
      kill -TERM "$pid"  # graceful: NOT_SERVING, in-flight calls finish, pool closed
      pids+=("$pid")
    fi
    rm -f "$RUN/pids/$svc.pid"
  done
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        # Safe for a service: every unit of work is one DB transaction.
        echo "stack.sh: pid $pid ignored SIGTERM for ${STOP_TIMEOUT}s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
  done
  echo "stack.sh: services stopped"
  if [[ ${STACK_PRIVATE_DB:-0} == 1 ]]; then private_db stop; fi
  rm -f "$ENV_FILE"
}

status() {
  local svc pid rc=0
  # shellcheck source=/dev/null
  [[ -f $ENV_FILE ]] && . "$ENV_FILE"
  for svc in "${SERVICES[@]}"; do
    if pid=$(service_pid "$svc"); then
      echo "stack.sh: $svc running (pid $pid) on $(addr_of "$svc")"
    else
      echo "stack.sh: $svc stopped"; rc=3
    fi
  done
  if [[ ${STACK_PRIVATE_DB:-0} == 1 ]]; then private_db status || rc=3; fi
  exit "$rc"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 {up|down|status}" >&2; exit 2 ;;
esac
