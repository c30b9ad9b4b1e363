"""Command-line tools around the running services: readiness wait and the demo."""
