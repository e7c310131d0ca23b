"""mTLS with real certificates and real TLS handshakes against uvicorn on loopback."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from fastapi_mesh import MeshClient, MeshSettings, UpstreamUnavailable
from fastapi_mesh.security.certs import CertificateAuthority
from tests.upstreams import Fleet, Replica

pytestmark = pytest.mark.anyio


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, each with a SPIFFE identity."""
    ca = CertificateAuthority.create()
    ca.write(directory)
    ca.issue("secure", dns_names=["127.0.0.1"]).write(directory / "server")
    ca.issue("api-gateway", dns_names=[]).write(directory / "client")
    files = {f"{who}.{ext}": directory / who / f"tls.{ext}" for who in ("server", "client") for ext in ("crt", "key")}
    return {"ca.crt": directory / "ca.crt", **files}


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
