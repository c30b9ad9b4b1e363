"""Launches the stack: one launcher (`launcher`: a private MariaDB from `mariadb`, a private
NATS server from `nats`, the services as processes from `services`, StackError, the default
ports), asks them whether they serve (`health`); `sale` opens a sale on one.

Used by `make up`/`down`/`status` (`python -m seckill_stack`), the tests and the benchmarks;
the tools import it, never each other.
"""
