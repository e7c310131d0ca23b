"""Environment presets: the values each preset lays under the global settings, and how globals replace them."""

from __future__ import annotations

from typing import Any

import pytest

from fastapi_mesh.settings import PRESETS, CircuitBreakerConfig, MeshSettings


def _preset_cases() -> list[Any]:
    return [
        pytest.param(env, section, field, value, id=f"{env}-{section}.{field}")
        for env, sections in PRESETS.items()
        for section, fields in sections.items()
        for field, value in fields.items()
    ]


def test_default_environment_is_development() -> None:
    """Without an environment the settings use the development preset."""
    settings = MeshSettings()
    assert settings.environment == "development"
    assert settings.service_name == "app"
    # development values that differ from the built-in defaults prove the preset was applied
    assert settings.retry.max_delay == 1.0
    assert settings.circuit_breaker.reset_timeout == 10.0
    assert settings.discovery.refresh_interval == 5.0


def test_production_preset_carries_seed_values() -> None:
    """environment="production" gives the seed's production values in every section."""
    s = MeshSettings(environment="production")
    assert s.environment == "production"
    assert s.circuit_breaker.failure_threshold == 20
    assert s.circuit_breaker.failure_threshold_percentage == 30.0
    assert s.circuit_breaker.timeout == 3.0
    assert s.circuit_breaker.reset_timeout == 120.0
    assert s.retry.max_retries == 10
    assert s.retry.initial_delay == 0.5
    assert s.retry.max_delay == 30.0
    assert s.retry.backoff_strategy == "fibonacci"
    assert s.health_check.liveness_interval == 5.0
    assert s.health_check.readiness_interval == 3.0
    assert s.health_check.failure_threshold == 5
    assert s.discovery.refresh_interval == 15.0
    assert s.load_balancer.strategy == "least-response-time"
    assert s.load_balancer.session_affinity is True
    assert s.load_balancer.max_connections_per_instance == 500


def test_development_has_no_session_affinity() -> None:
    """The development preset turns session affinity off and balances round-robin."""
    s = MeshSettings(environment="development")
    assert s.load_balancer.session_affinity is False
    assert s.load_balancer.strategy == "round-robin"
    assert s.load_balancer.max_connections_per_instance == 100


@pytest.mark.parametrize(("environment", "section", "field", "value"), _preset_cases())
def test_every_preset_value_shows_on_settings(environment: str, section: str, field: str, value: Any) -> None:
    """Each value of each preset in PRESETS is what the settings object carries for that environment."""
    settings = MeshSettings(environment=environment)
    actual = getattr(getattr(settings, section), field)
    assert actual == value
    assert type(actual) is type(value)


@pytest.mark.parametrize("environment", sorted(PRESETS))
def test_preset_values_reach_the_service_policy(environment: str) -> None:
    """for_service of an unconfigured upstream returns the preset's policy sections unchanged."""
    settings = MeshSettings(environment=environment)
    policy = settings.for_service("anything")
    for section in ("load_balancer", "circuit_breaker", "retry"):
        for field, value in PRESETS[environment][section].items():
            assert getattr(getattr(policy, section), field) == value, (section, field)


def test_preset_leaves_non_preset_fields_at_builtin_defaults() -> None:
    """Fields no preset mentions keep the built-in defaults, whatever the environment."""
    s = MeshSettings(environment="production")
    assert s.retry.jitter == "full"
    assert s.retry.retry_on_status == [502, 503, 504]
    assert s.circuit_breaker.sliding_window_size == 100
    assert s.health_check.check_timeout == 2.0
    assert s.discovery.backend == "static"
    assert s.mtls.enabled is False


def test_global_overrides_preset_field_by_field() -> None:
    """A global retry value beats the preset for that field only; the preset fills the rest."""
    s = MeshSettings(environment="production", retry={"max_retries": 4})
    assert s.retry.max_retries == 4
    assert s.retry.backoff_strategy == "fibonacci"
    assert s.retry.initial_delay == 0.5
    assert s.retry.max_delay == 30.0


def test_global_section_given_as_model_keeps_preset_for_unset_fields() -> None:
    """A section passed as a model instance overrides only the fields that were set on it."""
    s = MeshSettings(environment="production", circuit_breaker=CircuitBreakerConfig(timeout="1s"))
    assert s.circuit_breaker.timeout == 1.0
    assert s.circuit_breaker.failure_threshold == 20
    assert s.circuit_breaker.reset_timeout == 120.0
