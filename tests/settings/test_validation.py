"""Start-up validation: bad values, endpoint URLs, checks across fields, unknown keys and frozen settings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from fastapi_mesh.settings import (
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
)
from tests.settings.support import error_text

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
    message = error_text(exc_info)
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
    message = error_text(exc_info)
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


@pytest.mark.parametrize(
    "url",
    [
        " http://10.0.0.1:8080",
        "http://256.1.1.1:80",
        "http://ho\tst:80",
        "http://bad host:80",
        "http://-leading.example",
        "http://a..b:80",
        "https://admin:s3cret@10.0.0.1:8443",
    ],
)
def test_malformed_endpoint_urls_fail_at_construction(url: str) -> None:
    """Whitespace, impossible addresses, bad host names and credentials are refused, naming the field."""
    with pytest.raises(ValidationError, match=r"discovery\.endpoints\.svc\.0\.url[\s\S]*malformed endpoint URL"):
        MeshSettings(discovery={"endpoints": {"svc": [url]}})


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1:8080", "https://user-service.default.svc.cluster.local", "http://[::1]:80", "http://my_host"],
)
def test_good_endpoint_urls_pass(url: str) -> None:
    """Addresses, DNS names (underscores too, as in SRV-style names) and IPv6 literals are accepted."""
    assert MeshSettings(discovery={"endpoints": {"svc": [url]}}).discovery.endpoints["svc"][0].url == url


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
    assert f"\n{section}.bogus\n  Extra inputs are not permitted" in error_text(exc_info)


def test_endpoint_rejects_unknown_key() -> None:
    """An endpoint object with an unknown key fails naming its position."""
    with pytest.raises(ValidationError) as exc_info:
        MeshSettings(discovery={"endpoints": {"u": [{"url": "http://a:1", "wieght": 2}]}})
    assert "\ndiscovery.endpoints.u.0.wieght\n  Extra inputs are not permitted" in error_text(exc_info)


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
    assert f"\n{field}\n  Extra inputs are not permitted" in error_text(exc_info)


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
