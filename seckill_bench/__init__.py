"""seckill-bench: a ghz-like load tool for the seckill gRPC services.

    from seckill_bench import BenchConfig, run
    report = run(BenchConfig(call="seckill.v1.ActivityService/Seckill", host="127.0.0.1:50052",
                             data='{"activity_id": 1, "user_id": "u-{{.RequestNumber}}"}',
                             total=20_000, concurrency=64, procs=2))
    print(report.rps, report.latency_ms["p99"], report.status_counts, report.reason_counts)
"""

from seckill_bench.config import BenchConfig, ConfigError, parse_duration
from seckill_bench.report import Report
from seckill_bench.runner import BenchError, run, run_load
from seckill_stack.invariants import Invariant

__all__ = [
    "BenchConfig",
    "BenchError",
    "ConfigError",
    "Invariant",
    "Report",
    "parse_duration",
    "run",
    "run_load",
]
