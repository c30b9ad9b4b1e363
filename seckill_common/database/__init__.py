"""Persistence: the pool and its transactions, migrations, the stock row, idempotency, reads."""
