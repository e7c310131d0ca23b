"""``fastapi-mesh serve`` with mTLS, over real TLS handshakes: who gets in, what the app learns about the caller,
and the plain port for probes and metrics."""

from __future__ import annotations

import os
import ssl
import warnings
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.security.serve_support import GATEWAY, Pki, Served, client, peer_certificate

pytestmark = pytest.mark.integration


def _refused(served: Served, context: ssl.SSLContext) -> BaseException:
    with (
        httpx.Client(verify=context, trust_env=False, timeout=5.0) as http,
        pytest.raises(httpx.TransportError) as info,
    ):
        http.get(served.url + "/whoami")
    return info.value


def test_a_caller_with_a_certificate_from_the_mesh_ca_reaches_the_route_and_the_app_learns_its_spiffe_id(
    pki: Pki, served: Served
) -> None:
    with client(pki, pki.gateway) as http:
        response = http.get(served.url + "/whoami")
    assert response.status_code == 200
    body = response.json()
    assert body["identity"] == GATEWAY
    tls = body["tls"]
    assert x509.load_pem_x509_certificate(tls["client_cert_chain"][0].encode()) == pki.gateway.issued.certificate
    assert tls["client_cert_name"] == "CN=api-gateway,O=cluster.local"
    assert tls["client_cert_error"] is None
    assert tls["tls_version"] == 0x0304  # TLS 1.3 when both sides can
    assert isinstance(tls["cipher_suite"], int) and tls["cipher_suite"] >> 8 == 0x13  # a TLS 1.3 suite: 0x13xx
    assert x509.load_pem_x509_certificate(tls["server_cert"].encode()) == pki.server.issued.certificate


def test_tls_1_2_is_accepted_and_reported(pki: Pki, served: Served) -> None:
    context = pki.client_context(pki.gateway)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=context, trust_env=False, timeout=5.0) as http:
        tls = http.get(served.url + "/whoami").json()["tls"]
    assert tls["tls_version"] == 0x0303
    assert tls["cipher_suite"] in {c["id"] & 0xFFFF for c in context.get_ciphers()}


def test_the_server_presents_its_own_certificate_with_its_spiffe_id(pki: Pki, served: Served) -> None:
    presented = peer_certificate(served.port, pki.client_context(pki.gateway))
    names = presented.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/default/sa/orders"]


def test_a_caller_without_a_client_certificate_is_refused_in_the_handshake(pki: Pki, served: Served) -> None:
    before = served.log().count("GET /whoami")
    _refused(served, pki.client_context(None))
    with client(pki, pki.gateway) as http:
        assert http.get(served.url + "/health/live").status_code == 200  # the log has caught up to here
    assert served.log().count("GET /whoami") == before  # no request reached the app


def test_a_certificate_from_another_ca_is_refused(pki: Pki, served: Served) -> None:
    context = pki.client_context(pki.foreign)  # trusts the server, presents a certificate the mesh CA did not sign
    _refused(served, context)


def test_an_expired_certificate_is_refused(pki: Pki, served: Served) -> None:
    assert pki.expired.issued.certificate.not_valid_after_utc < pki.gateway.issued.certificate.not_valid_before_utc
    _refused(served, pki.client_context(pki.expired))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_are_refused(pki: Pki, served: Served, version: ssl.TLSVersion) -> None:
    def old_client(maximum: ssl.TLSVersion) -> ssl.SSLContext:
        context = pki.client_context(pki.gateway)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client speak the old versions at all
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Python frowns on them, as it should
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = maximum
        return context

    with httpx.Client(verify=old_client(ssl.TLSVersion.TLSv1_2), trust_env=False, timeout=5.0) as http:
        assert http.get(served.url + "/whoami").status_code == 200  # the same client, allowed TLS 1.2, gets in
    with (
        httpx.Client(verify=old_client(version), trust_env=False, timeout=5.0) as http,
        pytest.raises(httpx.ConnectError),  # the handshake fails: the server speaks TLS 1.2 and 1.3 only
    ):
        http.get(served.url + "/whoami")


def test_plain_http_on_the_tls_port_gets_nothing(served: Served) -> None:
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        try:
            response = http.get(f"http://127.0.0.1:{served.port}/health/ready")
        except httpx.TransportError:
            return
    assert response.status_code == 400  # uvicorn's answer to a request that is not TLS; the app saw nothing


def test_the_plain_port_serves_probes_and_metrics_and_refuses_everything_else(pki: Pki, served: Served) -> None:
    with httpx.Client(base_url=served.plain_url, trust_env=False, timeout=5.0) as http:
        assert {path: http.get(path).status_code for path in ("/health/live", "/health/ready", "/health/startup")} == {
            "/health/live": 200,
            "/health/ready": 200,
            "/health/startup": 200,
        }
        assert "mesh_authorization_denied_total" in http.get("/metrics").text
        refused = {
            path: http.get(path)
            for path in ("/whoami", "/orders/1", "/ops", "/mesh/status", "/docs", "/openapi.json", "/nope", "/")
        }
        posted = http.post("/health/ready/../../whoami")
        queried = http.get("/whoami", params={"x": "/health/ready"})
    assert {path: r.status_code for path, r in refused.items()} == dict.fromkeys(refused, 403)
    assert {r.json()["detail"] for r in refused.values()} == {"forbidden"}
    assert posted.status_code == 403 and queried.status_code == 403
    with client(pki, pki.gateway) as http:
        assert http.get(served.url + "/mesh/status").status_code == 200  # what the plain port refuses, mTLS serves


def test_the_files_are_readable_only_by_their_owner(pki: Pki) -> None:
    """The keys ``certs`` writes are private to the user who made them."""
    assert os.stat(pki.server.key).st_mode & 0o077 == 0
    assert os.stat(Path(pki.root / "ca" / "ca.key")).st_mode & 0o077 == 0
