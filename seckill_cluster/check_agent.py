"""The health check HAProxy asks each database host: HTTP 200 when the local node is `Synced`
and in the `Primary` component, 503 otherwise (and no answer at all when the host is gone).

    python -m seckill_cluster.check_agent --socket /path/mysqld.sock --listen 10.77.0.11:9200

It runs beside the node, in its namespace, and reads the node's state through its Unix socket,
so the answer is the node's own view: a node cut off from the others says `non-Primary` (and
HAProxy stops sending it connections) rather than looking healthy from outside. Galera's
`clustercheck` script does the same job through xinetd.
"""

from __future__ import annotations

import argparse
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pymysql

STATE_SQL = ("SHOW GLOBAL STATUS WHERE Variable_name IN "
             "('wsrep_local_state_comment', 'wsrep_cluster_status')")
TIMEOUT_S = 1


def node_state(socket_path: str) -> dict[str, str]:
    """wsrep_local_state_comment and wsrep_cluster_status, read through the node's socket."""
    conn = pymysql.connect(unix_socket=socket_path, user="root", connect_timeout=TIMEOUT_S,
                           read_timeout=TIMEOUT_S, write_timeout=TIMEOUT_S)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.wsrep_on")
            row = cur.fetchone()
            assert row is not None  # a SELECT of a variable answers one row
            (wsrep_on,) = row
            if not wsrep_on:  # a plain server (the benchmark's baseline): up is healthy
                return {"wsrep_on": "OFF"}
            cur.execute(STATE_SQL)
            return {name: value for name, value in cur.fetchall()}
    finally:
        conn.close()


def healthy(state: dict[str, str]) -> bool:
    return state.get("wsrep_on") == "OFF" or (
            state.get("wsrep_local_state_comment") == "Synced"
            and state.get("wsrep_cluster_status") == "Primary")


def serve(socket_path: str, host: str, port: int) -> None:
    # One check at a time: HAProxy's checks are small and periodic, and a node that hangs
    # must not pile up connections to it.
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                try:
                    state = node_state(socket_path)
                    ok = healthy(state)
                    text = " ".join(f"{k}={v}" for k, v in sorted(state.items()))
                except pymysql.MySQLError as exc:
                    ok, text = False, f"node unreachable: {exc}"
            body = (text + "\n").encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # several checks a second from each proxy: not worth a log line each

    ThreadingHTTPServer((host, port), Handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m seckill_cluster.check_agent")
    parser.add_argument("--socket", required=True, help="the node's Unix socket")
    parser.add_argument("--listen", required=True, help="host:port to answer on")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    serve(args.socket, host, int(port))


if __name__ == "__main__":
    main()
