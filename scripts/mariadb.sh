#!/usr/bin/env bash
# A private MariaDB server for development: its own data dir, socket, pid file and error log
# under DIR, listening on 127.0.0.1:PORT only, so it never touches a system server on 3306.
#
#   scripts/mariadb.sh {start|stop|status|url}      env: DIR (.run/mariadb), PORT (3307)
#
# The data dir survives stop/start; remove DIR to start from scratch.
set -euo pipefail

DIR=${DIR:-.run/mariadb}
PORT=${PORT:-3307}
START_TIMEOUT=30  # seconds for the server to answer after launch
STOP_TIMEOUT=60   # seconds for a clean InnoDB shutdown
if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
  echo "mariadb.sh: PORT must be 1..65535, got '$PORT'" >&2; exit 2
fi

DIR=$(realpath -m "$DIR")  # mariadbd resolves relative paths against its datadir, not our cwd
DATA=$DIR/data
PIDFILE=$DIR/mariadbd.pid
ERRLOG=$DIR/error.log
SOCKET=$DIR/mariadbd.sock
# A Unix socket path must fit in 108 bytes; a deep checkout falls back to /tmp.
if ((${#SOCKET} > 100)); then SOCKET=/tmp/seckill-mariadb-$PORT.sock; fi

# /usr/sbin is not on a non-root user's PATH, but that is where Debian puts mariadbd.
MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
# mariadbd refuses to run as root unless told to; anyone else runs as themselves.
AS_ROOT=()
if ((EUID == 0)); then AS_ROOT=(--user=root); fi

die() { echo "mariadb.sh: $*" >&2; exit 1; }

client() { mariadb --no-defaults -h127.0.0.1 -P"$PORT" -uroot "$@"; }

# The pid from the pid file, if that process is alive and really a mariadbd (pids get reused).
running_pid() {
  local pid
  [[ -s $PIDFILE ]] || return 1
  pid=$(<"$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null || echo mariadbd) == mariadbd ]] || return 1
  echo "$pid"
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

install_server() {
  [[ -x $MARIADBD ]] && return
  ((EUID == 0)) || die "mariadbd not found; install the mariadb-server package (needs root)"
  echo "mariadb.sh: installing mariadb-server" >&2
  # A system server that apt may start alongside does not matter: ours has its own port.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
  MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
}

init_datadir() {
  [[ -d $DATA/mysql ]] && return
  echo "mariadb.sh: initialising $DATA" >&2
  # Initialise beside the final place and rename, so a failed run is simply retried.
  rm -rf "$DATA.tmp"
  # 'normal' gives root a password (empty) that works over TCP, not only via the socket.
  if ! mariadb-install-db --no-defaults --datadir="$DATA.tmp" "${AS_ROOT[@]}" \
    --auth-root-authentication-method=normal --skip-test-db >"$DIR/install.log" 2>&1; then
    tail -n 20 "$DIR/install.log" >&2
    die "mariadb-install-db failed (see $DIR/install.log)"
  fi
  mv "$DATA.tmp" "$DATA"
}

start() {
  local pid
  if pid=$(running_pid); then
    # The same data dir cannot serve two ports; say so rather than hand out a wrong URL.
    [[ $(<"$DIR/port") == "$PORT" ]] || die "already running on port $(<"$DIR/port"), not $PORT"
    echo "mariadb.sh: already running (pid $pid) on 127.0.0.1:$PORT"; return
  fi
  # Otherwise the wait below could be answered by somebody else's server.
  port_taken && die "127.0.0.1:$PORT is already in use by another process; choose another PORT"
  install_server
  mkdir -p "$DIR"
  init_datadir
  # setsid: its own session, so a Ctrl-C in make or the end of this shell leaves it running.
  # skip-name-resolve: no reverse DNS per connection (root@127.0.0.1 exists for TCP logins).
  setsid nohup "$MARIADBD" --no-defaults --datadir="$DATA" --socket="$SOCKET" --port="$PORT" \
    --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$PIDFILE" --log-error="$ERRLOG" \
    "${AS_ROOT[@]}" </dev/null >>"$DIR/mariadbd.out" 2>&1 &
  pid=$!
  echo "$PORT" >"$DIR/port"
  local deadline=$((SECONDS + START_TIMEOUT))
  until client -e 'select 1' >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
      echo "mariadb.sh: server on port $PORT did not come up; last lines of $ERRLOG:" >&2
      tail -n 20 "$ERRLOG" >&2 2>/dev/null || true
      kill "$pid" 2>/dev/null || true
      exit 1
    fi
    sleep 0.2
  done
  echo "mariadb.sh: running (pid $pid) on 127.0.0.1:$PORT, data in $DATA"
}

stop() {
  local pid deadline=$((SECONDS + STOP_TIMEOUT))
  pid=$(running_pid) || { echo "mariadb.sh: not running"; rm -f "$PIDFILE"; return; }
  kill -TERM "$pid"  # mariadbd's clean shutdown: flushes InnoDB, removes its pid file
  while kill -0 "$pid" 2>/dev/null; do
    # No SIGKILL: a forced stop risks a crash recovery, better to let a person look.
    ((SECONDS < deadline)) || die "pid $pid still running after ${STOP_TIMEOUT}s (see $ERRLOG)"
    sleep 0.2
  done
  rm -f "$PIDFILE"
  echo "mariadb.sh: stopped"
}

status() {
  local pid
  # Exit 3 when stopped, as LSB init scripts do, so callers can test it.
  if pid=$(running_pid); then
    echo "mariadb.sh: running (pid $pid) on 127.0.0.1:$(<"$DIR/port"), data in $DATA"
  else
    echo "mariadb.sh: stopped (data in $DATA)"; exit 3
  fi
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  url) echo "mysql://root@127.0.0.1:$PORT/seckill" ;;
  *) echo "usage: [DIR=.run/mariadb] [PORT=3307] $0 {start|stop|status|url}" >&2; exit 2 ;;
esac
