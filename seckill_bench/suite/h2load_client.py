"""h2load (nghttp2's HTTP/2 load generator, in C) as a gRPC client for fixed request bodies:
installing it, the frames it sends, running it and reading its counts and per-call times, and
the Python check of the gRPC answer it cannot see (the status travels in the trailers)."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from seckill_stack.launcher import StackError
from seckill_stack.packages import apt_install

H2LOAD_PACKAGE = "nghttp2-client"  # Debian's package of h2load
_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout")


def install_h2load() -> str:
    """The h2load binary; as root, installs Debian's nghttp2-client through apt if missing."""
    found = shutil.which("h2load")
    if found:
        return found
    apt_install(H2LOAD_PACKAGE, "h2load", StackError)
    found = shutil.which("h2load")
    if not found:
        raise StackError(f"{H2LOAD_PACKAGE} installed, but no h2load on PATH")
    return found


def grpc_frame(message: Message) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, big-endian length, the bytes."""
    payload = message.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def grpc_timeout(seconds: float) -> str:
    """The grpc-timeout header value: whole milliseconds."""
    return f"{max(1, round(seconds * 1000))}m"


@dataclass
class H2Run:
    """What one h2load run measured."""

    requests: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    seconds: float
    rps: float
    latencies_s: list[float]

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def within(self, seconds: float) -> int:
        return sum(1 for latency in self.latencies_s if latency < seconds)


def run_h2load(binary: str, address: str, path: str, body: bytes, *, in_flight: int,
               clients: int, requests: int | None = None, duration_s: float | None = None,
               warm_up_s: float = 0.0, deadline_s: float | None = None) -> H2Run:
    """One h2load run: `in_flight` streams over `clients` connections, one thread."""
    streams = max(1, -(-in_flight // clients))
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body_path, log_path = Path(tmp) / "body", Path(tmp) / "calls.log"
        body_path.write_bytes(body)
        argv = [binary, "-c", str(clients), "-m", str(streams), "-t", "1",
                "-d", str(body_path), "--log-file", str(log_path),
                "-H", "content-type: application/grpc", "-H", "te: trailers"]
        if deadline_s is not None:
            argv += ["-H", f"grpc-timeout: {grpc_timeout(deadline_s)}"]
        if duration_s is not None:
            argv += ["-D", f"{duration_s:g}"]
            if warm_up_s > 0:
                argv += ["--warm-up-time", f"{warm_up_s:g}"]
        else:
            argv += ["-n", str(requests or 1)]
        argv.append(f"http://{address}{path}")
        limit = (duration_s or 0) + warm_up_s + 300
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit,
                              check=False)
        finished, counts = _FINISHED.search(done.stdout), _REQUESTS.search(done.stdout)
        if done.returncode != 0 or finished is None or counts is None:
            raise StackError(f"h2load failed ({done.returncode}): "
                             f"{(done.stdout + done.stderr).strip()[-500:]}")
        latencies = []
        with contextlib.suppress(OSError):
            for line in log_path.read_text().splitlines():
                fields = line.split("\t")
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies.append(int(fields[2]) / 1e6)
    total, _started, done_n, ok, failed, errored, timed_out = map(int, counts.groups())
    seconds = float(finished.group(1)) * _UNITS[finished.group(2)]
    return H2Run(total, done_n, ok, failed, errored, timed_out, seconds,
                 float(finished.group(3)), latencies)


def grpc_answer(address: str, path: str, body: bytes, timeout_s: float = 10.0) -> str:
    """The gRPC code (and ErrorInfo reason) of one call with the body's bytes."""
    with grpc.insecure_channel(address) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            path, request_serializer=None, response_deserializer=None)
        try:
            call(body[5:], timeout=timeout_s)
        except grpc.RpcError as exc:
            return _code_and_reason(exc)
    return "OK"


def _code_and_reason(exc: grpc.RpcError) -> str:
    code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
    trailers: tuple[tuple[str, str | bytes], ...] = (
        tuple(exc.trailing_metadata() or ()) if isinstance(exc, grpc.Call) else ())
    for key, value in trailers:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return f"{code}/{info.reason}"
    return code


class CodeSampler:
    """A Python client sending the row's body beside h2load, a call at a time with the same
    deadline, counting the gRPC codes: h2load cannot tell an answer from a refusal."""

    def __init__(self, address: str, path: str, body: bytes, deadline_s: float) -> None:
        self.codes: Counter[str] = Counter()
        self._args = (address, path, body, deadline_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        address, path, body, deadline_s = self._args
        with grpc.insecure_channel(address) as channel:
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                path, request_serializer=None, response_deserializer=None)
            while not self._stop.wait(0.02):
                try:
                    call(body[5:], timeout=deadline_s)
                    self.codes["OK"] += 1
                except grpc.RpcError as exc:
                    self.codes[_code_and_reason(exc)] += 1

    def __enter__(self) -> CodeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
