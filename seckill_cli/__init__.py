"""Command-line tools: the `seckill` CLI, user tokens, and the health waiter of `make up`."""
