"""Per-service overrides and effective policies: ``services[name]``, ``for_service``, ``get_service_config``
and copies of the settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fastapi_mesh.settings import MeshSettings, ServicePolicy, get_service_config
from tests.settings.support import SERVICES_JSON


def test_service_override_beats_global_for_that_service_only() -> None:
    """services[name] wins for that service; other services get the global value."""
    s = MeshSettings(
        environment="production", retry={"max_retries": 4}, services={"pay": {"retry": {"max_retries": 0}}}
    )
    assert s.for_service("pay").retry.max_retries == 0
    assert s.for_service("users").retry.max_retries == 4
    assert s.retry.max_retries == 4


def test_service_override_is_partial() -> None:
    """A per-service override changes only its own fields; everything else comes from global and preset."""
    s = MeshSettings(
        environment="production",
        retry={"max_retries": 4, "max_delay": "10s"},
        services={"pay": {"retry": {"max_retries": 0}, "circuit_breaker": {"timeout": 10}}},
    )
    pay = s.for_service("pay")
    assert pay.service == "pay"
    assert pay.retry.max_retries == 0
    assert pay.retry.max_delay == 10.0
    assert pay.retry.initial_delay == 0.5
    assert pay.retry.backoff_strategy == "fibonacci"
    assert pay.circuit_breaker.timeout == 10.0
    assert pay.circuit_breaker.failure_threshold == 20
    assert pay.circuit_breaker.reset_timeout == 120.0
    assert pay.load_balancer == s.load_balancer
    assert pay.bulkhead == s.bulkhead
    assert pay.outlier_detection == s.outlier_detection


def test_service_override_accepts_durations() -> None:
    """Per-service duration fields take the same '250ms' strings as the globals."""
    s = MeshSettings(services={"pay": {"circuit_breaker": {"timeout": "250ms"}}})
    assert s.for_service("pay").circuit_breaker.timeout == 0.25
    assert s.circuit_breaker.timeout == 10.0


def test_service_override_none_clears_the_global_value() -> None:
    """An explicit None in services[name] (e.g. no bulkhead limit) wins over a global value."""
    s = MeshSettings(
        bulkhead={"max_concurrent": 10},
        retry={"max_elapsed": 5, "hedge_delay": "50ms"},
        services={"admin": {"bulkhead": {"max_concurrent": None}, "retry": {"max_elapsed": None, "hedge_delay": None}}},
    )
    admin = s.for_service("admin")
    assert admin.bulkhead.max_concurrent is None
    assert admin.retry.max_elapsed is None
    assert admin.retry.hedge_delay is None
    assert s.for_service("other").bulkhead.max_concurrent == 10


def test_a_service_split_replaces_the_global_split() -> None:
    """``routing.split`` given for a service replaces the global dict; ``{}`` clears it."""
    settings = MeshSettings(
        routing={"split": {"v1": 100}},
        services={"canary": {"routing": {"split": {"v2": 100}}}, "plain": {"routing": {"split": {}}}},
    )
    assert settings.for_service("canary").routing.split == {"v2": 100}
    assert settings.for_service("plain").routing.split == {}
    assert settings.for_service("other").routing.split == {"v1": 100}


def test_for_service_without_override_returns_globals() -> None:
    """An upstream with no services entry gets exactly the global sections."""
    s = MeshSettings(environment="staging", retry={"max_retries": 7})
    policy = s.for_service("users")
    assert isinstance(policy, ServicePolicy)
    assert policy.service == "users"
    assert policy.retry == s.retry
    assert policy.circuit_breaker == s.circuit_breaker
    assert policy.load_balancer == s.load_balancer


def test_for_service_and_get_service_config_agree() -> None:
    """get_service_config(name, settings) returns the same policy as settings.for_service(name)."""
    s = MeshSettings(environment="production", services={"pay": {"retry": {"max_retries": 0}}})
    for name in ("pay", "users"):
        assert get_service_config(name, s) == s.for_service(name)
    assert get_service_config("pay", s).retry.max_retries == 0
    assert get_service_config("users", s).retry.max_retries == 10


def test_get_service_config_without_settings_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_service_config(name) with no settings builds MeshSettings() from the MESH_* variables."""
    monkeypatch.setenv("MESH_ENVIRONMENT", "production")
    monkeypatch.setenv("MESH_SERVICES", SERVICES_JSON)
    pay = get_service_config("payment-service")
    assert pay.service == "payment-service"
    assert pay.retry.max_retries == 0
    assert pay.retry.backoff_strategy == "fibonacci"
    users = get_service_config("user-service")
    assert users.retry.max_retries == 10
    assert users.circuit_breaker.failure_threshold == 20


def test_model_copy_with_update_validates_and_recomputes_policies() -> None:
    """A copy with ``update`` is validated like new settings (service overrides given as dicts work, bad
    values fail), and cannot switch environment, whose preset is already applied."""
    settings = MeshSettings(retry={"max_retries": 2})
    copied = settings.model_copy(update={"services": {"x": {"retry": {"max_retries": 5}}}})
    assert copied.for_service("x").retry.max_retries == 5
    assert copied.for_service("y").retry.max_retries == 2
    with pytest.raises(ValidationError):
        settings.model_copy(update={"retry": {"max_retries": -1}})
    with pytest.raises(ValueError, match="cannot change environment"):
        settings.model_copy(update={"environment": "production"})
    assert settings.model_copy().retry.max_retries == 2


def test_model_copy_does_not_share_effective_policies() -> None:
    """A copy with other retry settings gets its own effective policies, not the original's cached ones."""
    original = MeshSettings(retry={"max_retries": 1})
    assert original.for_service("svc").retry.max_retries == 1
    copied = original.model_copy(update={"retry": original.retry.model_copy(update={"max_retries": 4})})
    assert copied.for_service("svc").retry.max_retries == 4
    assert original.for_service("svc").retry.max_retries == 1
