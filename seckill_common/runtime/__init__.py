"""Server runtime: lifecycle, workers, interceptors, auth, rate limits, telemetry, TLS, peers."""
