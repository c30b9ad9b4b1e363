"""Settings from the environment: a bad value fails with one line naming the variable and what
it accepts (never echoing a secret); values in milliseconds are held in seconds; only the
mapping given is read; secrets stay out of the settings' repr."""

from __future__ import annotations

import pytest

from seckill_common.config import ClientSettings, ConfigError, Settings, default_of

BASE = {"SECKILL_ADMIN_TOKEN": "admin-token-for-tests"}


@pytest.mark.parametrize(("variable", "value", "line"), [
    ("SECKILL_DB_POOL_SIZE", "0", "SECKILL_DB_POOL_SIZE must be within 1..1000, got 0"),
    ("SECKILL_DB_POOL_SIZE", "ten", "SECKILL_DB_POOL_SIZE must be an integer, got 'ten'"),
    ("SECKILL_PEER_TIMEOUT", "soon", "SECKILL_PEER_TIMEOUT must be a number, got 'soon'"),
    ("SECKILL_WATCH_POLL_INTERVAL_MS", "5",
     "SECKILL_WATCH_POLL_INTERVAL_MS must be within 20.0..750.0, got 5"),
    ("SECKILL_EVENTS_ENABLED", "maybe",
     "SECKILL_EVENTS_ENABLED must be true or false, got 'maybe'"),
    ("SECKILL_COMMIT_MODE", "fast",
     "SECKILL_COMMIT_MODE must be one of coalesced, per_request, got 'fast'"),
    ("SECKILL_EVENTS_NATS_STREAM", "a.b",
     "SECKILL_EVENTS_NATS_STREAM must be letters, digits, '-' and '_', got 'a.b'"),
    ("SECKILL_MIN_IN_FLIGHT", "6000",
     "SECKILL_MIN_IN_FLIGHT (6000) must not exceed SECKILL_MAX_IN_FLIGHT (5000)"),
    ("SECKILL_TLS_CA", "/etc/hostname",
     "SECKILL_TLS_CA (mutual TLS) needs SECKILL_TLS_CERT and _KEY"),
])
def test_a_bad_value_is_one_line_naming_the_variable(variable: str, value: str,
                                                      line: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**BASE, variable: value})
    assert str(raised.value) == line


@pytest.mark.parametrize(("variable", "value"), [
    ("SECKILL_USER_TOKEN_SECRET", "short-secret"),
    ("SECKILL_RATE_LIMIT_REDIS_URL", "http://:hunter2-password@redis:6379"),
    ("SECKILL_EVENTS_NATS_URL", "http://user:hunter2-password@nats:4222"),
])
def test_a_bad_secret_is_not_echoed(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable} must ") as raised:
        Settings.from_env({**BASE, variable: value})
    assert "\n" not in str(raised.value) and value not in str(raised.value)


def test_milliseconds_are_held_in_seconds_and_defaults_are_the_fields() -> None:
    settings = Settings.from_env({**BASE, "SECKILL_BATCH_WINDOW_MS": "5",
                                  "SECKILL_QUEUE_MOVE_INTERVAL_MS": ""})
    assert settings.batch_window_s == 0.005
    assert settings.queue.move_interval_s == 0.1  # empty: the default, 100 ms
    assert default_of("batch_window_s") == 0.002 and default_of("events").enabled is True


def test_only_the_mapping_given_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECKILL_DB_POOL_SIZE", "0")  # bad, but not in the mapping
    monkeypatch.setenv("SECKILL_ORDER_ADDR", "10.0.0.9:50053")
    assert Settings.from_env(BASE).db_pool_size == 10
    assert Settings.from_env(BASE).order_addr == "127.0.0.1:50053"
    assert ClientSettings.from_env().order_addr == "10.0.0.9:50053"


def test_secrets_stay_out_of_the_repr() -> None:
    secret = "s" * 40
    settings = Settings.from_env({
        **BASE, "SECKILL_USER_TOKEN_SECRET": secret,
        "SECKILL_MYSQL_URL": "mysql://app:db-password@db:3306/shop",
        "SECKILL_RATE_LIMIT_REDIS_URL": "redis://:redis-password@redis:6379/0",
        "SECKILL_EVENTS_NATS_URL": "nats://app:nats-password@nats:4222"})
    assert settings.user_token_secret == secret and settings.mysql.password == "db-password"
    assert settings.rate_limit_redis_url.startswith("redis://:redis-password@")
    shown = repr(settings) + str(settings)
    assert secret not in shown and BASE["SECKILL_ADMIN_TOKEN"] not in shown
    for password in ("db-password", "redis-password", "nats-password"):
        assert password not in shown


def test_switches_take_the_usual_words_in_any_case() -> None:
    for word, value in [("true", True), (" On ", True), ("1", True), ("no", False),
                        ("OFF", False), ("0", False)]:
        assert Settings.from_env({**BASE, "SECKILL_EVENTS_ENABLED": word}).events.enabled is value
