"""deploy/prometheus.yml as compose runs it: mounted from the repo, every service scraped on its
metrics port, every activity replica found by DNS."""

from __future__ import annotations

import pytest

from tests.helpers.compose import (
    METRICS_PORT,
    PROMETHEUS_CONFIG,
    SERVICES,
)


def test_prometheus_mounts_the_config_from_the_repo(compose):
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert PROMETHEUS_CONFIG.is_file()


def scrape_targets(prometheus: dict, service: str) -> list[str]:
    """How Prometheus finds `service`: 'static' and/or 'dns' per matching scrape config."""
    ways = []
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            if f"{service}:{METRICS_PORT}" in static["targets"]:
                ways.append("static")
        for dns in job.get("dns_sd_configs", []):
            if service in dns["names"] and dns.get("type", "SRV") == "A" \
                    and dns.get("port") == METRICS_PORT:
                ways.append("dns")
    return ways


@pytest.mark.parametrize("service", SERVICES)
def test_prometheus_scrapes_every_service_on_its_metrics_port(prometheus, service):
    assert len(scrape_targets(prometheus, service)) == 1, service


def test_prometheus_finds_every_activity_replica_by_dns(prometheus):
    # A static `activity:9464` would resolve to one replica per scrape, not to each of them.
    assert scrape_targets(prometheus, "activity") == ["dns"]


def test_prometheus_jobs_are_unique_and_paths_default(prometheus):
    names = [job["job_name"] for job in prometheus["scrape_configs"]]
    assert len(names) == len(set(names))
    for job in prometheus["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
