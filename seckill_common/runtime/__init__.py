"""Server runtime: lifecycle, workers, interceptors, overload, auth, rate limits, RPC metrics,
servers' TLS, reflection, logs, streams, background tasks."""
