"""mTLS with real certificates and real TLS handshakes against uvicorn on loopback."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fastapi_mesh import MeshClient, MeshSettings, UpstreamUnavailable
from tests.upstreams import Fleet, Replica

pytestmark = pytest.mark.anyio


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate with a SPIFFE identity."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("mesh-ca"))
        .issuer_name(_name("mesh-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "ca", ca_key, ca)

    def leaf(name: str, san: x509.GeneralName, usage: x509.ObjectIdentifier) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(directory / name, key, cert)

    leaf(
        "server",
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/secure"),
        ExtendedKeyUsageOID.SERVER_AUTH,
    )
    leaf(
        "client",
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/api-gateway"),
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return {p.stem + p.suffix: p for p in directory.iterdir()}


async def start_mtls_replica(fleet: Fleet, pki: dict[str, Path]) -> Replica:
    """One uvicorn replica serving https that requires a client certificate signed by the mesh CA."""
    (replica,) = await fleet.start(
        1,
        ssl_certfile=str(pki["server.crt"]),
        ssl_keyfile=str(pki["server.key"]),
        ssl_ca_certs=str(pki["ca.crt"]),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    )
    return replica


async def test_mutual_tls_call_succeeds_with_the_mesh_certificate(fleet: Fleet, tmp_path: Path) -> None:
    """With mtls enabled the client presents its certificate and trusts the mesh CA: the call succeeds."""
    pki = make_pki(tmp_path)
    replica = await start_mtls_replica(fleet, pki)
    settings = MeshSettings(
        discovery={"endpoints": {"secure": [replica.url]}},
        mtls={
            "enabled": True,
            "cert_path": str(pki["client.crt"]),
            "key_path": str(pki["client.key"]),
            "ca_path": str(pki["ca.crt"]),
        },
    )
    async with MeshClient(settings) as client:
        response = await client.get("secure", "/whoami")
    assert replica.url.startswith("https://")
    assert response.json()["replica"] == replica.name


async def test_server_requiring_client_certificates_refuses_a_client_without_one(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Without mtls the handshake fails (the server wants a certificate; ours trusts no private CA)."""
    pki = make_pki(tmp_path)
    replica = await start_mtls_replica(fleet, pki)
    settings = MeshSettings(discovery={"endpoints": {"secure": [replica.url]}}, retry={"max_retries": 0})
    async with MeshClient(settings) as client:
        with pytest.raises(UpstreamUnavailable, match="'secure'"):
            await client.get("secure", "/whoami")
    assert replica.total == 0


def test_mtls_enabled_with_an_unreadable_certificate_fails_at_start(tmp_path: Path) -> None:
    """A missing CA bundle or certificate fails when the client starts, naming the field and the file."""
    settings = MeshSettings(
        mtls={
            "enabled": True,
            "cert_path": str(tmp_path / "missing.crt"),
            "key_path": str(tmp_path / "missing.key"),
            "ca_path": str(tmp_path / "missing-ca.crt"),
        }
    )
    from fastapi_mesh.stack import build_ssl_context

    with pytest.raises(ValueError, match=r"mtls\.ca_path: cannot load the CA bundle .*missing-ca\.crt"):
        build_ssl_context(settings)
    pki = make_pki(tmp_path)
    half = settings.model_copy(update={"mtls": settings.mtls.model_copy(update={"ca_path": str(pki["ca.crt"])})})
    with pytest.raises(ValueError, match=r"mtls\.cert_path/key_path: cannot load .*missing\.crt"):
        build_ssl_context(half)
