"""MeshSettings: presets, precedence, durations, MESH_* parsing and start-up validation (DESIGN.md "Settings")."""

import json
import math
import os
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from fastapi_mesh.settings import (
    PRESETS,
    BulkheadConfig,
    CircuitBreakerConfig,
    DiscoveryConfig,
    EndpointConfig,
    HealthCheckConfig,
    LoadBalancerConfig,
    MeshSettings,
    MtlsConfig,
    OutlierDetectionConfig,
    RetryConfig,
    ServicePolicy,
    get_service_config,
    parse_duration,
)

ENDPOINTS_JSON = json.dumps(
    {
        "user-service": [
            "http://10.0.0.1:8080",
            {"url": "http://10.0.0.2:8080", "weight": 3, "metadata": {"version": "v2"}, "zone": "a"},
        ]
    }
)
SERVICES_JSON = json.dumps({"payment-service": {"retry": {"max_retries": 0}}})


@pytest.fixture(autouse=True)
def _no_mesh_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without any MESH_* variable (settings read them case-insensitively)."""
    for key in list(os.environ):
        if key.upper().startswith("MESH_"):
            monkeypatch.delenv(key)


def _message(exc_info: pytest.ExceptionInfo[BaseException]) -> str:
    return str(exc_info.value)


def _preset_cases() -> list[Any]:
    return [
        pytest.param(env, section, field, value, id=f"{env}-{section}.{field}")
        for env, sections in PRESETS.items()
        for section, fields in sections.items()
        for field, value in fields.items()
    ]


# ------------------------------------------------------------------------------------------------ presets


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


# --------------------------------------------------------------------------------------------- precedence


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


# ---------------------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("500ms", 0.5),
        ("3s", 3.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("250 ms", 0.25),
        (" 2s ", 2.0),
        ("3", 3.0),
        ("0.25", 0.25),
        (".5", 0.5),
        (3, 3.0),
        (0.75, 0.75),
    ],
)
def test_parse_duration(raw: Any, seconds: float) -> None:
    """parse_duration turns unit strings, numeric strings and numbers into float seconds."""
    result = parse_duration(raw)
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(("raw", "seconds"), [("500ms", 0.5), ("3s", 3.0), ("2m", 120.0), ("1h", 3600.0), ("7", 7.0)])
def test_duration_fields_accept_unit_strings(raw: str, seconds: float) -> None:
    """Duration fields of the settings parse unit strings to float seconds."""
    s = MeshSettings(
        circuit_breaker={"timeout": raw}, health_check={"liveness_interval": raw}, retry={"max_delay": raw}
    )
    assert s.circuit_breaker.timeout == seconds
    assert s.health_check.liveness_interval == seconds
    assert s.retry.max_delay == seconds


@pytest.mark.parametrize("raw", ["abc", "5 parsecs", "", "1.2.3s", "5sec"])
def test_bad_duration_string_names_the_field(raw: str) -> None:
    """A string that is not a duration fails at construction naming the field and the value."""
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings(retry={"max_delay": raw})
    message = _message(exc_info)
    assert "retry.max_delay" in message
    assert f"not a duration: {raw!r}" in message
    errors = exc_info.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"] == ("retry", "max_delay")


@pytest.mark.parametrize("bad", [None, [1]])
def test_parse_duration_passes_non_durations_through(bad: Any) -> None:
    """parse_duration hands non-numbers back unchanged, for pydantic to judge."""
    assert parse_duration(bad) is bad


def test_negative_duration_string_fails_on_the_bound() -> None:
    """"-1s" parses as a number and then fails the field's positivity bound, naming the field."""
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings(retry={"max_delay": "-1s"})
    assert exc_info.value.errors()[0]["loc"] == ("retry", "max_delay")
    assert "greater than 0" in _message(exc_info)


@pytest.mark.parametrize("raw", ["1e-3s", "2E1ms", "3S", "500MS", "5."])
def test_duration_spellings(raw: str) -> None:
    """Exponents, upper-case units and a trailing dot are read as numbers."""
    expected = {"1e-3s": 0.001, "2E1ms": 0.02, "3S": 3.0, "500MS": 0.5, "5.": 5.0}[raw]
    assert parse_duration(raw) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [True, None, [1], {"s": 1}])
def test_non_duration_value_is_rejected(bad: Any) -> None:
    """A bool, None or container given as a duration fails naming the field (True is not 1 second)."""
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings(circuit_breaker={"timeout": bad})
    assert "\ncircuit_breaker.timeout\n" in _message(exc_info)


@hypothesis_settings(database=None, deadline=None)
@given(st.floats(min_value=0.0, max_value=1e6, exclude_min=True, allow_nan=False, allow_subnormal=False))
@example(0.5)
@example(1e6)
@example(1e-05)
def test_seconds_and_milliseconds_agree(x: float) -> None:
    """Any duration written as f"{x}s" and as f"{x*1000}ms" parses to the same seconds."""
    # subnormals are excluded: they carry too few significant bits for a 1e-9 relative comparison
    from_seconds = parse_duration(f"{x}s")
    from_millis = parse_duration(f"{x * 1000}ms")
    assert math.isclose(from_seconds, from_millis, rel_tol=1e-9)
    assert math.isclose(from_seconds, x, rel_tol=1e-9)


# ------------------------------------------------------------------------------------ environment parsing


def test_env_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESH_SERVICE_NAME sets service_name."""
    monkeypatch.setenv("MESH_SERVICE_NAME", "api-gateway")
    assert MeshSettings().service_name == "api-gateway"


def test_env_environment_selects_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESH_ENVIRONMENT=production applies the production preset."""
    monkeypatch.setenv("MESH_ENVIRONMENT", "production")
    s = MeshSettings()
    assert s.environment == "production"
    assert s.circuit_breaker.failure_threshold == 20
    assert s.retry.backoff_strategy == "fibonacci"
    assert s.load_balancer.session_affinity is True


def test_env_nested_value_over_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESH_RETRY__MAX_RETRIES=4 overrides the preset's max_retries and keeps its other retry values."""
    monkeypatch.setenv("MESH_ENVIRONMENT", "production")
    monkeypatch.setenv("MESH_RETRY__MAX_RETRIES", "4")
    s = MeshSettings()
    assert s.retry.max_retries == 4
    assert s.retry.backoff_strategy == "fibonacci"
    assert s.retry.max_delay == 30.0


def test_env_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESH_CIRCUIT_BREAKER__TIMEOUT=250ms gives a 0.25 s attempt timeout."""
    monkeypatch.setenv("MESH_CIRCUIT_BREAKER__TIMEOUT", "250ms")
    s = MeshSettings()
    assert s.circuit_breaker.timeout == 0.25
    assert s.circuit_breaker.failure_threshold == 5


def test_env_endpoints_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESH_DISCOVERY__ENDPOINTS is JSON; plain URLs and endpoint objects both become EndpointConfig."""
    monkeypatch.setenv("MESH_DISCOVERY__ENDPOINTS", ENDPOINTS_JSON)
    s = MeshSettings()
    assert list(s.discovery.endpoints) == ["user-service"]
    first, second = s.discovery.endpoints["user-service"]
    assert first == EndpointConfig(url="http://10.0.0.1:8080", weight=1, metadata={}, zone=None)
    assert second == EndpointConfig(url="http://10.0.0.2:8080", weight=3, metadata={"version": "v2"}, zone="a")
    assert s.discovery.refresh_interval == 5.0


def test_env_services_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESH_SERVICES is JSON of per-service overrides, merged over the globals."""
    monkeypatch.setenv("MESH_SERVICES", SERVICES_JSON)
    monkeypatch.setenv("MESH_RETRY__MAX_RETRIES", "3")
    s = MeshSettings()
    assert list(s.services) == ["payment-service"]
    assert s.for_service("payment-service").retry.max_retries == 0
    assert s.for_service("user-service").retry.max_retries == 3


def test_code_values_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value passed to MeshSettings(...) takes precedence over the MESH_* variable for the same field."""
    monkeypatch.setenv("MESH_SERVICE_NAME", "from-env")
    assert MeshSettings(service_name="from-code").service_name == "from-code"


# ------------------------------------------------------------------------------------------- bad inputs

BAD_INIT = [
    pytest.param({"bogus": 1}, "bogus", "Extra inputs are not permitted", id="unknown-top-level-key"),
    pytest.param({"retry": {"foo": 1}}, "retry.foo", "Extra inputs are not permitted", id="unknown-retry-key"),
    pytest.param(
        {"load_balancer": {"strategy": "fastest"}}, "load_balancer.strategy", "'round-robin'", id="unknown-strategy"
    ),
    pytest.param(
        {"retry": {"backoff_strategy": "quadratic"}}, "retry.backoff_strategy", "'fibonacci'", id="unknown-backoff"
    ),
    pytest.param({"environment": "prod"}, "environment", "'production'", id="unknown-environment"),
    pytest.param({"circuit_breaker": {"timeout": 0}}, "circuit_breaker.timeout", "greater than 0", id="timeout-0"),
    pytest.param(
        {"circuit_breaker": {"reset_timeout": -1}}, "circuit_breaker.reset_timeout", "greater than 0", id="reset-neg"
    ),
    pytest.param({"retry": {"max_delay": 0}}, "retry.max_delay", "greater than 0", id="max-delay-0"),
    pytest.param(
        {"circuit_breaker": {"failure_threshold_percentage": 101}},
        "circuit_breaker.failure_threshold_percentage",
        "less than or equal to 100",
        id="percentage-over-100",
    ),
    pytest.param({"retry": {"max_retries": -1}}, "retry.max_retries", "greater than or equal to 0", id="neg-retries"),
    pytest.param(
        {"services": {"pay": {"retry": {"max_retries": -1}}}},
        "services.pay.retry.max_retries",
        "greater than or equal to 0",
        id="neg-retries-in-service",
    ),
    pytest.param(
        {"retry": {"initial_delay": 5, "max_delay": 1}},
        "retry",
        "initial_delay (5.0s) is larger than max_delay (1.0s)",
        id="initial-over-max-delay",
    ),
    pytest.param(
        {"services": {"pay": {"retry": {"initial_delay": 5}}}},
        "services.pay.retry",
        "initial_delay (5.0s) is larger than max_delay (1.0s)",
        id="initial-over-max-delay-after-merge",
    ),
    pytest.param(
        {"mtls": {"enabled": True}}, "mtls", "mtls is enabled but cert_path, key_path, ca_path not set", id="mtls"
    ),
    pytest.param(
        {"mtls": {"enabled": True, "cert_path": "/c", "key_path": "/k"}},
        "mtls",
        "mtls is enabled but ca_path not set",
        id="mtls-no-ca",
    ),
    pytest.param(
        {"circuit_breaker": {"failure_threshold": 11, "sliding_window_size": 10}},
        "circuit_breaker",
        "failure_threshold (11) is larger than the count window sliding_window_size (10)",
        id="threshold-over-count-window",
    ),
]


@pytest.mark.parametrize(("kwargs", "field", "fragment"), BAD_INIT)
def test_bad_value_fails_at_construction(kwargs: dict[str, Any], field: str, fragment: str) -> None:
    """Each bad value raises ValidationError at MeshSettings(...) naming the field."""
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings(**kwargs)
    message = _message(exc_info)
    assert f"\n{field}\n" in message
    assert fragment in message
    locs = [".".join(str(p) for p in err["loc"]) for err in exc_info.value.errors()]
    assert locs == [field]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://x", "the scheme must be http or https"),
        ("http://", "no host"),
        ("http://host:99999", "Port out of range"),
        ("http://host/path", "give only scheme://host[:port]"),
        ("not-a-url", "the scheme must be http or https"),
        ("not a url", "whitespace or control characters"),
        ("http://host:0", "port 0"),
        ("http://host?x=1", "give only scheme://host[:port]"),
    ],
)
def test_malformed_endpoint_url(url: str, reason: str) -> None:
    """A malformed endpoint URL fails naming the endpoint's position, the URL and the reason."""
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings(discovery={"endpoints": {"user-service": ["http://10.0.0.1:8080", url]}})
    message = _message(exc_info)
    assert "\ndiscovery.endpoints.user-service.1.url\n" in message
    assert f"malformed endpoint URL {url!r}" in message
    assert reason in message


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("http://10.0.0.1:8080", "http://10.0.0.1:8080"),
        ("https://users.internal/", "https://users.internal"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_good_endpoint_url(url: str, stored: str) -> None:
    """Well-formed endpoint URLs are accepted, a trailing slash dropped."""
    s = MeshSettings(discovery={"endpoints": {"u": [url]}})
    assert s.discovery.endpoints["u"][0].url == stored


def test_mtls_enabled_with_paths_is_accepted() -> None:
    """mtls with all three paths set validates."""
    s = MeshSettings(mtls={"enabled": True, "cert_path": "/c.crt", "key_path": "/c.key", "ca_path": "/ca.crt"})
    assert s.mtls.enabled is True
    assert s.mtls.ca_path == "/ca.crt"


def test_threshold_larger_than_time_window_is_allowed() -> None:
    """The count-window check does not apply to a time window (size is seconds there)."""
    s = MeshSettings(
        circuit_breaker={"failure_threshold": 11, "sliding_window_size": 10, "sliding_window_type": "time"}
    )
    assert s.circuit_breaker.failure_threshold == 11


def test_unknown_nested_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESH_RETRY__FOO is an unknown key of retry: the error names retry.foo and the variable."""
    monkeypatch.setenv("MESH_RETRY__FOO", "5")
    with pytest.raises(ValueError, match=r"^unknown setting in environment variable MESH_RETRY__FOO: ") as exc_info:
        MeshSettings()
    assert "'retry.foo' names no setting" in _message(exc_info)


@pytest.mark.parametrize("variable", ["MESH_RETRY_MAX_RETRIES", "MESH_SERVICENAME", "mesh_retrys__max_retries"])
def test_mistyped_env_var_is_rejected(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """A MESH_ variable that names no setting (e.g. a single underscore) is a ValueError naming it."""
    monkeypatch.setenv(variable, "4")
    with pytest.raises(ValueError, match=f"^unknown setting in environment variable {variable}: ") as exc_info:
        MeshSettings()
    assert not isinstance(exc_info.value, ValidationError)
    path = ".".join(variable[len("MESH_") :].split("__")).lower()
    assert f"{path!r} names no setting" in _message(exc_info)
    assert "retry, routing, service_name, services" in _message(exc_info)


BAD_ENV = [
    pytest.param({"MESH_ENVIRONMENT": "prod"}, "environment", "MESH_ENVIRONMENT", id="environment"),
    pytest.param({"MESH_RETRY__MAX_RETRIES": "-1"}, "retry.max_retries", "MESH_RETRY__MAX_RETRIES", id="retries"),
    pytest.param(
        {"MESH_RETRY__BACKOFF_STRATEGY": "quadratic"},
        "retry.backoff_strategy",
        "MESH_RETRY__BACKOFF_STRATEGY",
        id="backoff",
    ),
    pytest.param(
        {"MESH_LOAD_BALANCER__STRATEGY": "fastest"}, "load_balancer.strategy", "MESH_LOAD_BALANCER__STRATEGY", id="lb"
    ),
    pytest.param(
        {"MESH_CIRCUIT_BREAKER__TIMEOUT": "0"}, "circuit_breaker.timeout", "MESH_CIRCUIT_BREAKER__TIMEOUT", id="t0"
    ),
    pytest.param(
        {"MESH_CIRCUIT_BREAKER__TIMEOUT": "abc"}, "circuit_breaker.timeout", "MESH_CIRCUIT_BREAKER__TIMEOUT", id="tabc"
    ),
    pytest.param(
        {"MESH_CIRCUIT_BREAKER__FAILURE_THRESHOLD_PERCENTAGE": "101"},
        "circuit_breaker.failure_threshold_percentage",
        "MESH_CIRCUIT_BREAKER__FAILURE_THRESHOLD_PERCENTAGE",
        id="percentage",
    ),
    pytest.param(
        {"MESH_SERVICES": json.dumps({"payment-service": {"retry": {"max_retries": -1}}})},
        "services.payment-service.retry.max_retries",
        "MESH_SERVICES",
        id="services-retries",
    ),
    pytest.param(
        {"MESH_DISCOVERY__ENDPOINTS": json.dumps({"u": ["ftp://x"]})},
        "discovery.endpoints.u.0.url",
        "MESH_DISCOVERY__ENDPOINTS",
        id="endpoint-url",
    ),
    pytest.param({"MESH_RETRY__INITIAL_DELAY": "5"}, "retry", "MESH_RETRY__INITIAL_DELAY", id="initial-over-max"),
    pytest.param(
        {"MESH_CIRCUIT_BREAKER__FAILURE_THRESHOLD": "200"},
        "circuit_breaker",
        "MESH_CIRCUIT_BREAKER__FAILURE_THRESHOLD",
        id="threshold-over-window",
    ),
    pytest.param({"MESH_MTLS__ENABLED": "true"}, "mtls", "MESH_MTLS__ENABLED", id="mtls-without-paths"),
    pytest.param(
        {"MESH_SERVICES": json.dumps({"pay": {"retry": {"initial_delay": 5}}})},
        "services.pay.retry",
        "MESH_SERVICES",
        id="services-merge",
    ),
]


@pytest.mark.parametrize(("env", "field", "variable"), BAD_ENV)
def test_bad_env_value_names_field_and_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str, variable: str
) -> None:
    """A bad value from the environment fails naming both the field and the MESH_ variable that set it."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings()
    message = _message(exc_info)
    assert f"\n{field}\n" in message
    assert f"set by {variable}=" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MESH_SERVICES", json.dumps({"payment-service": {"retry": {"max_retries": -1}}})),
        ("MESH_DISCOVERY__ENDPOINTS", json.dumps({"u": ["ftp://x"]})),
    ],
)
def test_bad_env_message_quotes_json_value_verbatim(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    """The '(set by VAR=...)' note repeats a JSON variable's value exactly, braces not doubled."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings()
    message = _message(exc_info)
    assert f"(set by {variable}={value!r})" in message
    assert "{{" not in message


# ------------------------------------------------------------------------------------- forbid and frozen

SECTIONS = [
    DiscoveryConfig,
    LoadBalancerConfig,
    CircuitBreakerConfig,
    RetryConfig,
    OutlierDetectionConfig,
    BulkheadConfig,
    HealthCheckConfig,
    MtlsConfig,
]


@pytest.mark.parametrize("model", [*SECTIONS, EndpointConfig, ServicePolicy, MeshSettings], ids=lambda m: m.__name__)
def test_every_model_forbids_extra_and_is_frozen(model: type[BaseModel]) -> None:
    """Every section model is configured with extra="forbid" and frozen=True."""
    assert model.model_config.get("extra") == "forbid"
    assert model.model_config.get("frozen") is True


@pytest.mark.parametrize("model", SECTIONS, ids=lambda m: m.__name__)
def test_section_rejects_unknown_key(model: type[BaseModel]) -> None:
    """Constructing a section with an unknown key fails with extra_forbidden on that key."""
    with pytest.raises(ValidationError) as exc_info:
        model(bogus=1)
    errors = exc_info.value.errors()
    assert [(e["type"], e["loc"]) for e in errors] == [("extra_forbidden", ("bogus",))]


@pytest.mark.parametrize(
    "section",
    [
        "discovery",
        "load_balancer",
        "circuit_breaker",
        "retry",
        "outlier_detection",
        "bulkhead",
        "health_check",
        "mtls",
    ],
)
def test_settings_section_rejects_unknown_key(section: str) -> None:
    """An unknown key inside any section of MeshSettings fails naming section.key."""
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings(**{section: {"bogus": 1}})
    assert f"\n{section}.bogus\n  Extra inputs are not permitted" in _message(exc_info)


def test_endpoint_rejects_unknown_key() -> None:
    """An endpoint object with an unknown key fails naming its position."""
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings(discovery={"endpoints": {"u": [{"url": "http://a:1", "wieght": 2}]}})
    assert "\ndiscovery.endpoints.u.0.wieght\n  Extra inputs are not permitted" in _message(exc_info)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"bogus": {}}, "services.pay.bogus"),
        ({"health_check": {"failure_threshold": 1}}, "services.pay.health_check"),
        ({"retry": {"bogus": 1}}, "services.pay.retry.bogus"),
        ({"bulkhead": {"bogus": 1}}, "services.pay.bulkhead.bogus"),
    ],
)
def test_service_override_rejects_unknown_key(override: dict[str, Any], field: str) -> None:
    """services[name] accepts only policy sections and their fields."""
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings(services={"pay": override})
    assert f"\n{field}\n  Extra inputs are not permitted" in _message(exc_info)


def test_settings_are_frozen() -> None:
    """Assigning to MeshSettings or one of its sections raises a frozen_instance error."""
    s = MeshSettings(services={"pay": {"retry": {"max_retries": 0}}})
    with pytest.raises(ValidationError) as exc_info:
        s.service_name = "other"  # type: ignore[misc]
    assert exc_info.value.errors()[0]["type"] == "frozen_instance"
    with pytest.raises(ValidationError) as exc_info:
        s.retry = RetryConfig()  # type: ignore[misc]
    assert exc_info.value.errors()[0]["type"] == "frozen_instance"
    with pytest.raises(ValidationError) as exc_info:
        s.retry.max_retries = 9  # type: ignore[misc]
    assert exc_info.value.errors()[0]["type"] == "frozen_instance"
    with pytest.raises(ValidationError) as exc_info:
        s.for_service("pay").retry.max_retries = 9  # type: ignore[misc]
    assert exc_info.value.errors()[0]["type"] == "frozen_instance"
    assert s.service_name == "app"
    assert s.retry.max_retries == 2
    assert s.for_service("pay").retry.max_retries == 0


def test_model_copy_does_not_share_effective_policies() -> None:
    """A copy with other retry settings gets its own effective policies, not the original's cached ones."""
    original = MeshSettings(retry={"max_retries": 1})
    assert original.for_service("svc").retry.max_retries == 1
    copied = original.model_copy(update={"retry": original.retry.model_copy(update={"max_retries": 4})})
    assert copied.for_service("svc").retry.max_retries == 4
    assert original.for_service("svc").retry.max_retries == 1
