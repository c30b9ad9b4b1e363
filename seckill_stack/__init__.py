"""Launches the stack: a private MariaDB (`mariadb`), the services as processes (`services`),
and asks them whether they serve (`health`); `sale` opens a sale on one.

Used by `make up`/`down`/`status` (`python -m seckill_stack`), the tests and the benchmarks;
the tools import it, never each other.
"""
