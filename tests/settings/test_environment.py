"""Settings from ``MESH_*`` variables: names, JSON values, precedence of code, and errors that name the variable."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from fastapi_mesh.cli import main
from fastapi_mesh.settings import EndpointConfig, MeshSettings
from tests.settings.support import SERVICES_JSON, error_text

ENDPOINTS_JSON = json.dumps(
    {
        "user-service": [
            "http://10.0.0.1:8080",
            {"url": "http://10.0.0.2:8080", "weight": 3, "metadata": {"version": "v2"}, "zone": "a"},
        ]
    }
)


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


def test_variables_below_free_form_maps_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service name is a key of ``services``, not a setting name: a variable through it is fine."""
    monkeypatch.setenv("MESH_SERVICES__PAYMENT__RETRY__MAX_RETRIES", "0")
    assert MeshSettings().for_service("payment").retry.max_retries == 0


def test_unknown_nested_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESH_RETRY__FOO is an unknown key of retry: the error names retry.foo and the variable."""
    monkeypatch.setenv("MESH_RETRY__FOO", "5")
    with pytest.raises(ValueError, match=r"^unknown setting in environment variable MESH_RETRY__FOO: ") as exc_info:
        MeshSettings()
    assert "'retry.foo' names no setting" in error_text(exc_info)


@pytest.mark.parametrize("variable", ["MESH_RETRY_MAX_RETRIES", "MESH_SERVICENAME", "mesh_retrys__max_retries"])
def test_mistyped_env_var_is_rejected(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """A MESH_ variable that names no setting (e.g. a single underscore) is a ValueError naming it."""
    monkeypatch.setenv(variable, "4")
    with pytest.raises(ValueError, match=f"^unknown setting in environment variable {variable}: ") as exc_info:
        MeshSettings()
    assert not isinstance(exc_info.value, ValidationError)
    path = ".".join(variable[len("MESH_") :].split("__")).lower()
    assert f"{path!r} names no setting" in error_text(exc_info)
    assert "retry, routing, service_name, services" in error_text(exc_info)


@pytest.mark.parametrize(
    "variable", ["MESH_SERVICE_NAME__FOO", "MESH_ZONE__X", "MESH_ENVIRONMENT__FOO", "MESH_RETRY__MAXRETRIES"]
)
def test_a_variable_naming_no_setting_at_any_level_is_an_error(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """A typo below a scalar setting, or inside a section, is refused, not ignored."""
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ValueError, match=f"unknown setting in environment variable {variable}"):
        MeshSettings()


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
    message = error_text(exc_info)
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
    message = error_text(exc_info)
    assert f"(set by {variable}={value!r})" in message
    assert "{{" not in message


def test_a_bad_value_from_code_does_not_blame_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The constructor's value wins over the variable, so its error names no variable."""
    monkeypatch.setenv("MESH_RETRY__MAX_RETRIES", "3")
    with pytest.raises(ValidationError) as caught:
        MeshSettings(retry={"max_retries": -1})
    assert "MESH_RETRY__MAX_RETRIES" not in str(caught.value)
    monkeypatch.setenv("MESH_RETRY__MAX_RETRIES", "-1")
    with pytest.raises(ValidationError, match="set by MESH_RETRY__MAX_RETRIES='-1'"):
        MeshSettings()


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("MESH_RETRY__RETRY_ON_STATUS", "502,503", "retry.retry_on_status"),
        ("MESH_LOAD_BALANCER__TRUSTED_PROXIES", "10.0.0.0/8", "load_balancer.trusted_proxies"),
    ],
)
def test_a_list_variable_that_is_not_json_names_field_and_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    """A list written as ``a,b`` fails naming the setting and the variable, and says lists are JSON."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match="not valid JSON") as caught:
        MeshSettings()
    assert f"{field} (set by {variable}={value!r})" in str(caught.value)


def test_check_reports_a_malformed_endpoint_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fastapi-mesh check`` exits 1 with a one-line reason for a URL httpx could not use."""
    monkeypatch.setenv("MESH_DISCOVERY__ENDPOINTS", '{"u": [" http://10.0.0.1:8080"]}')
    assert main(["check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("invalid mesh settings:") and "Traceback" not in err
    assert "MESH_DISCOVERY__ENDPOINTS" in err
