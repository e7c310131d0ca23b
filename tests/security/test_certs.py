"""``fastapi-mesh certs`` and ``fastapi_mesh.security.certs``: a development CA and, per service, a certificate
with its SPIFFE ID and Kubernetes DNS names that serves and calls."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fastapi_mesh.cli import main
from fastapi_mesh.security.certs import CertificateAuthority, spiffe_id


def run_certs(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object], str]:
    code = main(["certs", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out else {}), err


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_writes_a_ca_and_a_secret_like_directory_per_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    code, printed, err = run_certs(
        ["--out", str(out), "--trust-domain", "mesh.example", "--namespace", "shop", "api-gateway", "orders"], capsys
    )
    assert code == 0 and err == ""
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "api-gateway/ca.crt",
        "api-gateway/tls.crt",
        "api-gateway/tls.key",
        "ca.crt",
        "ca.key",
        "orders/ca.crt",
        "orders/tls.crt",
        "orders/tls.key",
    ]
    services = printed["services"]
    assert isinstance(services, dict)
    assert services["orders"]["identity"] == "spiffe://mesh.example/ns/shop/sa/orders"
    assert services["orders"]["cert_path"] == f"{out}/orders/tls.crt"
    ca = load(out / "ca.crt")
    assert (out / "orders" / "ca.crt").read_bytes() == (out / "ca.crt").read_bytes()
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert = load(out / "orders" / "tls.crt")
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://mesh.example/ns/shop/sa/orders"]
    assert names.get_values_for_type(x509.DNSName) == [
        "orders",
        "orders.shop",
        "orders.shop.svc",
        "orders.shop.svc.mesh.example",
        "localhost",
    ]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > dt.timedelta(days=80)


def test_the_key_matches_the_certificate_and_ssl_accepts_the_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_certs(["--out", str(tmp_path), "orders"], capsys)[0] == 0
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "orders" / "tls.crt", tmp_path / "orders" / "tls.key")  # raises on mismatch
    context.load_verify_locations(tmp_path / "orders" / "ca.crt")
    assert context.get_ca_certs()[0]["subject"][-1][0][1].startswith("fastapi-mesh development CA")


def test_a_second_run_reuses_the_ca_so_new_services_trust_the_old(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_certs(["--out", str(tmp_path), "orders"], capsys)[0] == 0
    first_ca = (tmp_path / "ca.crt").read_bytes()
    assert run_certs(["--out", str(tmp_path), "--dns", "orders.internal", "billing"], capsys)[0] == 0
    assert (tmp_path / "ca.crt").read_bytes() == first_ca
    billing = load(tmp_path / "billing" / "tls.crt")
    billing.verify_directly_issued_by(load(tmp_path / "ca.crt"))
    names = billing.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = names.get_values_for_type(x509.DNSName)
    assert "orders.internal" in dns


def test_a_ca_of_another_trust_domain_is_not_reused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_certs(["--out", str(tmp_path), "orders"], capsys)[0] == 0
    code, _, err = run_certs(["--out", str(tmp_path), "--trust-domain", "other.example", "billing"], capsys)
    assert code == 1
    assert "trust domain 'cluster.local', not 'other.example'" in err
    assert not (tmp_path / "billing").exists()


def test_a_name_that_is_no_service_name_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_certs(["--out", str(tmp_path), "Orders Service"], capsys)
    assert code == 1 and "is not a service name" in err
    assert not (tmp_path / "ca.crt").exists()


def test_certs_needs_no_valid_mesh_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_RETRY__MAX_DELAY", "3parsecs")  # would stop every other command
    assert run_certs(["--out", str(tmp_path), "orders"], capsys)[0] == 0


def test_issue_can_leave_out_the_spiffe_id_and_set_the_validity() -> None:
    ca = CertificateAuthority.create(trust_domain="mesh.example")
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    end = start + dt.timedelta(days=1)
    legacy = ca.issue("legacy", identity=None, dns_names=["legacy.example"], not_before=start, not_after=end)
    assert legacy.identity is None
    names = legacy.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == []
    assert legacy.certificate.not_valid_after_utc == end
    expected = spiffe_id("orders", trust_domain="mesh.example", namespace="shop")
    assert ca.issue("orders", namespace="shop").identity == expected
