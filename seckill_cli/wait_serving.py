"""Compose's healthcheck command: `python -m seckill_cli.wait_serving ADDR --timeout 2`."""

import sys

from seckill_stack.health import main, wait_serving

__all__ = ["main", "wait_serving"]

if __name__ == "__main__":
    sys.exit(main())
