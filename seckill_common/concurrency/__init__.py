"""Concurrency without I/O of its own: single-flight loads and coalesced batches."""
