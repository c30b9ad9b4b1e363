"""Persistence: the pool (db.py) and its sessions, start-up's database work, transactions,
migrations, error codes, and the tables shared by services (stock, orders, order events,
idempotency keys, leases)."""
