"""Which server identities a service accepts: the patterns of ``mtls.expected_identities`` and
``services.<name>.mtls.expected_identities``, the trust-domain default, and how the settings check them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fastapi_mesh import MeshSettings
from fastapi_mesh.connection import ClientTLS, ExpectedIdentities
from tests.security.tls_support import ClientPki

ORDERS = "spiffe://cluster.local/ns/default/sa/orders"


@pytest.mark.parametrize(
    ("patterns", "spiffe_ids", "dns_names", "accepted"),
    [
        ([], [ORDERS], [], True),
        ([], ["spiffe://example.org/ns/default/sa/orders"], [], False),  # another trust domain
        ([], ["spiffe://cluster.localhost/ns/a/sa/b"], [], False),  # not a prefix of a name, a whole domain
        ([], [], ["orders.default.svc.cluster.local"], True),
        ([], [], ["orders.cluster.localhost"], False),
        ([], [], [], False),  # a certificate with no identity at all
        ([ORDERS], [ORDERS], [], True),
        ([ORDERS], ["spiffe://cluster.local/ns/default/sa/orders2"], [], False),
        ([ORDERS], [], ["orders"], False),  # a SPIFFE ID is never matched against DNS names
        (["spiffe://cluster.local/ns/default/*"], [ORDERS], [], True),
        (["spiffe://cluster.local/ns/default/*"], ["spiffe://cluster.local/ns/ops/sa/orders"], [], False),
        (["*/sa/orders"], [ORDERS], [], True),
        (["*/sa/orders"], [], ["x/sa/orders"], False),  # a suffix with a slash is for SPIFFE IDs
        (["*"], ["spiffe://anywhere/x"], [], True),
        (["*"], [], [], False),
        (["orders.example.com"], [], ["Orders.Example.COM."], True),  # DNS names: any case, a final dot
        (["orders.example.com"], [], ["*.example.com"], True),  # a wildcard SAN covers one label
        (["a.orders.example.com"], [], ["*.example.com"], False),  # ... not two
        (["*.example.com"], [], ["orders.example.com"], True),
        (["*.example.com"], [], ["example.com"], False),
        (["orders-*"], [], ["orders-canary.internal"], True),
        (["other", ORDERS], [ORDERS], [], True),  # any one of the list
    ],
)
def test_expected_identities_match_spiffe_ids_and_dns_names(
    patterns: list[str], spiffe_ids: list[str], dns_names: list[str], accepted: bool
) -> None:
    assert ExpectedIdentities(patterns).accepts(spiffe_ids, dns_names) is accepted


def test_the_trust_domain_decides_what_the_default_accepts() -> None:
    expected = ExpectedIdentities(trust_domain="example.org")
    assert expected.accepts(["spiffe://example.org/ns/a/sa/b"], [])
    assert not expected.accepts([ORDERS], ["orders.default.svc.cluster.local"])
    assert str(expected) == "an identity in trust domain example.org"
    assert str(ExpectedIdentities([ORDERS, "*.example.com"])) == f"{ORDERS} or *.example.com"


def test_each_service_gets_its_own_list_or_the_global_one(tmp_path: Path) -> None:
    """``services.<name>.mtls.expected_identities`` replaces the global list for that service only; services
    with equal lists share one set (and so one pool per endpoint)."""
    pki = ClientPki(tmp_path)
    caller = pki.issue("me", "api-gateway")
    settings = MeshSettings(
        mtls={
            "enabled": True,
            "cert_path": str(caller.cert),
            "key_path": str(caller.key),
            "ca_path": str(pki.ca_path),
            "expected_identities": ["spiffe://cluster.local/ns/default/*"],
        },
        services={
            "orders": {"mtls": {"expected_identities": [ORDERS]}},
            "orders-v2": {"mtls": {"expected_identities": [ORDERS]}},
            "users": {"retry": {"max_retries": 1}},
            "legacy": {"mtls": {"expected_identities": None}},
        },
    )
    tls = ClientTLS.from_settings(settings)
    assert tls.expected("orders").patterns == (ORDERS,)
    assert tls.expected("orders") is tls.expected("orders-v2")
    for other in ("users", "legacy", "never-configured", None):
        assert tls.expected(other) is tls.default
    assert tls.default.patterns == ("spiffe://cluster.local/ns/default/*",)


def test_per_service_expected_identities_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_SERVICES__ORDERS__MTLS__EXPECTED_IDENTITIES", f'["{ORDERS}"]')
    monkeypatch.setenv("MESH_MTLS__TRUST_DOMAIN", "example.org")
    monkeypatch.setenv("MESH_MTLS__RELOAD_INTERVAL", "30s")
    settings = MeshSettings()
    override = settings.services["orders"].mtls
    assert override is not None and override.expected_identities == [ORDERS]
    assert (settings.mtls.trust_domain, settings.mtls.reload_interval) == ("example.org", 30.0)


@pytest.mark.parametrize(
    ("values", "location", "message"),
    [
        ({"mtls": {"expected_identities": ["spiffe://cluster.local/*/sa/x"]}}, "mtls.expected_identities", "'*'"),
        ({"mtls": {"expected_identities": ["*a*"]}}, "mtls.expected_identities", "at its start or end"),
        ({"mtls": {"expected_identities": [""]}}, "mtls.expected_identities", "is not a SPIFFE ID"),
        ({"mtls": {"expected_identities": ["a b"]}}, "mtls.expected_identities", "is not a SPIFFE ID"),
        (
            {"services": {"orders": {"mtls": {"expected_identities": ["x*y"]}}}},
            "services.orders.mtls.expected_identities",
            "'x*y'",
        ),
        ({"services": {"orders": {"mtls": {"allow": []}}}}, "services.orders.mtls.allow", "Extra inputs"),
        ({"mtls": {"trust_domain": "Cluster.Local"}}, "mtls.trust_domain", "not a SPIFFE trust domain"),
        ({"mtls": {"reload_interval": 0}}, "mtls.reload_interval", "greater than 0"),
    ],
    ids=["star-inside", "two-stars", "empty", "space", "per-service", "per-service-only-expected", "trust-domain",
         "interval"],
)
def test_bad_identity_settings_fail_naming_the_field(values: dict[str, object], location: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        MeshSettings(**values)  # type: ignore[arg-type]
    text = str(info.value)
    assert location in text and message in text
