"""The deployment files, parsed once per module: docker-compose.yml (as written and
interpolated), .env.example, deploy/prometheus.yml and deploy/k8s rendered."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.helpers.compose import (
    FILLED_SECRETS,
    PROMETHEUS_CONFIG,
    ROOT,
    interpolate,
)
from tests.helpers.k8s import OVERLAY, SECRET_VALUES, render


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose(raw_compose) -> dict:
    """The file as Compose runs it with a .env holding only the secrets: defaults for the
    rest."""
    return interpolate(raw_compose, FILLED_SECRETS)


@pytest.fixture(scope="module")
def prometheus() -> dict:
    return yaml.safe_load(PROMETHEUS_CONFIG.read_text())


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(OVERLAY, SECRET_VALUES)
