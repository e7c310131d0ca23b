"""load_balancer and routing settings: defaults, normalisation, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from fastapi_mesh.settings import LoadBalancerConfig, MeshSettings, RoutingConfig


def error_of(**settings: Any) -> str:
    with pytest.raises(ValidationError) as info:
        MeshSettings(**settings)
    return str(info.value)


def test_defaults() -> None:
    """The documented defaults."""
    lb = LoadBalancerConfig()
    assert (lb.affinity_key, lb.hash_balance_factor, lb.trusted_proxies) == ("client-ip", 1.25, [])
    assert (lb.panic_threshold, lb.slow_start_window, lb.zone_aware, lb.zone_min_healthy_percent) == (
        50.0,
        0.0,
        True,
        70.0,
    )
    assert lb.peak_ewma_decay == 10.0
    routing = RoutingConfig()
    assert (routing.subset_key, routing.split, routing.rules) == ("version", {}, [])


def test_affinity_key_forms() -> None:
    """client-ip, header:<name> (lower-cased) and cookie:<name> (kept as given) are accepted."""
    assert LoadBalancerConfig(affinity_key="header:X-User-Id").affinity_key == "header:x-user-id"
    assert LoadBalancerConfig(affinity_key="cookie:SessionID").affinity_key == "cookie:SessionID"


@pytest.mark.parametrize("value", ["ip", "header:", "cookie:a b", "query:user", "header:x;y"])
def test_bad_affinity_key_names_the_field(value: str) -> None:
    """A malformed affinity_key fails naming load_balancer.affinity_key."""
    message = error_of(load_balancer={"affinity_key": value})
    assert "load_balancer.affinity_key" in message
    assert "'client-ip', 'header:<name>' or 'cookie:<name>'" in message


def test_trusted_proxies_are_normalised_and_checked() -> None:
    """CIDRs and single addresses are accepted (host bits dropped); anything else names the field."""
    lb = LoadBalancerConfig(trusted_proxies=["10.1.2.3/8", "192.0.2.7", "2001:db8::/32"])
    assert lb.trusted_proxies == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
    message = error_of(load_balancer={"trusted_proxies": ["10.0.0.0/8", "proxy.local"]})
    assert "load_balancer.trusted_proxies" in message and "'proxy.local'" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("panic_threshold", 101),
        ("panic_threshold", -1),
        ("zone_min_healthy_percent", 120),
        ("hash_balance_factor", 0.5),
        ("slow_start_window", -1),
        ("peak_ewma_decay", 0),
    ],
)
def test_out_of_range_values_name_the_field(field: str, value: float) -> None:
    """Out-of-range load_balancer values fail naming the field."""
    assert f"load_balancer.{field}" in error_of(load_balancer={field: value})


def test_durations_accept_units() -> None:
    """slow_start_window and peak_ewma_decay take "30s" / "500ms" like every duration."""
    lb = LoadBalancerConfig(slow_start_window="30s", peak_ewma_decay="500ms")
    assert (lb.slow_start_window, lb.peak_ewma_decay) == (30.0, 0.5)


def test_routing_from_a_service_override() -> None:
    """A services entry's routing is the service's effective routing; others have none."""
    settings = MeshSettings(
        services={"user-service": {"routing": {"split": {"v1": 90, "v2": 10}, "rules": [{"subset": "v2"}]}}}
    )
    routing = settings.for_service("user-service").routing
    assert routing.split == {"v1": 90.0, "v2": 10.0}
    assert routing.rules[0].subset == "v2" and routing.rules[0].match.headers == {}
    assert settings.for_service("other").routing.split == {}


def test_negative_split_weight_names_the_field() -> None:
    """A negative split weight fails naming routing.split.<subset>."""
    assert "routing.split.v2" in error_of(routing={"split": {"v1": 1, "v2": -1}})


def test_all_zero_split_names_the_field() -> None:
    """A split whose weights are all 0 fails naming routing.split."""
    message = error_of(routing={"split": {"v1": 0, "v2": 0}})
    assert "routing.split" in message and "every weight is 0" in message


def test_rule_subset_must_be_in_the_split() -> None:
    """A rule naming a subset the split lacks fails naming services.<name>.routing.rules and the rule."""
    message = error_of(services={"user-service": {"routing": {"split": {"v1": 100}, "rules": [{"subset": "v3"}]}}})
    assert "services.user-service.routing.rules" in message
    assert "rules.0.subset: 'v3' is not one of the split's subsets (v1)" in message


def test_rule_needs_a_subset() -> None:
    """A rule without a subset fails naming it."""
    assert "routing.rules.0.subset" in error_of(routing={"rules": [{"match": {"headers": {"x": "1"}}}]})


def test_unknown_routing_key_is_refused() -> None:
    """Unknown keys inside routing and its rules are errors, like every section."""
    assert "routing.weights" in error_of(routing={"weights": {}})
    assert "routing.rules.0.match.query" in error_of(routing={"rules": [{"match": {"query": {}}, "subset": "a"}]})


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESH_LOAD_BALANCER__* and MESH_ROUTING__* reach the settings (dicts and lists as JSON)."""
    monkeypatch.setenv("MESH_LOAD_BALANCER__SLOW_START_WINDOW", "2m")
    monkeypatch.setenv("MESH_LOAD_BALANCER__TRUSTED_PROXIES", '["10.0.0.0/8"]')
    monkeypatch.setenv("MESH_ROUTING__SPLIT", '{"stable": 95, "canary": 5}')
    settings = MeshSettings()
    assert settings.load_balancer.slow_start_window == 120.0
    assert settings.load_balancer.trusted_proxies == ["10.0.0.0/8"]
    assert settings.routing.split == {"stable": 95.0, "canary": 5.0}
