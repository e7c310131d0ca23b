"""Server-side rotation under ``fastapi-mesh serve``: changed certificate, key and CA files are used by new
connections without a restart, open connections finish on the old ones, and a set that does not load keeps the
last good one with one error in the log."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx
import pytest

from fastapi_mesh.security.certs import CertificateAuthority, IssuedCertificate
from tests.security.serve_support import GATEWAY, Files, Pki, Served, client, peer_certificate, wait_until

pytestmark = pytest.mark.integration

RELOAD = {"MESH_MTLS__RELOAD_INTERVAL": "100ms"}
ERROR_LINE = "mTLS files changed but do not load"
RELOADED_LINE = "mTLS certificate, key and CA reloaded"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def own_copy(pki: Pki, tmp_path: Path) -> Files:
    """The server's files in a directory of their own, which the test then rewrites."""
    directory = tmp_path / "server"
    shutil.copytree(pki.server.directory, directory)
    return Files(directory, pki.server.issued)


def rewrite(files: Files, issued: IssuedCertificate) -> None:
    issued.write(files.directory)  # each file replaced whole (a rename), as a secret volume does


def test_a_rotated_certificate_is_used_by_new_connections_while_an_open_one_finishes(
    pki: Pki, tmp_path: Path
) -> None:
    server = own_copy(pki, tmp_path)
    with Served({**pki.server_env(server), **RELOAD}, log_dir=tmp_path) as served:
        first = peer_certificate(served.port, pki.client_context(pki.gateway))
        assert first == pki.server.issued.certificate
        results: list[httpx.Response] = []
        with client(pki, pki.gateway) as open_connection:
            assert open_connection.get(served.url + "/whoami").status_code == 200  # the connection is open
            slow = threading.Thread(
                target=lambda: results.append(open_connection.get(served.url + "/slow", params={"seconds": 1.0}))
            )
            slow.start()
            rotated = pki.ca.issue("orders")
            rewrite(server, rotated)
            wait_until(lambda: peer_certificate(served.port, pki.client_context(pki.gateway)) != first)
            assert peer_certificate(served.port, pki.client_context(pki.gateway)) == rotated.certificate
            slow.join(timeout=10)
        assert [r.status_code for r in results] == [200]  # the request on the old connection completed
        with client(pki, pki.gateway) as fresh:
            tls = fresh.get(served.url + "/whoami").json()["tls"]
        assert tls["server_cert"].encode() == rotated.cert_pem
        assert served.log().count(RELOADED_LINE) == 1


def test_a_half_written_certificate_keeps_the_old_one_and_logs_one_error(pki: Pki, tmp_path: Path) -> None:
    server = own_copy(pki, tmp_path)
    with Served({**pki.server_env(server), **RELOAD}, log_dir=tmp_path) as served:
        rotated = pki.ca.issue("orders")
        server.cert.write_bytes(rotated.cert_pem[: len(rotated.cert_pem) // 2])  # a writer caught half-way
        wait_until(lambda: ERROR_LINE in served.log())
        server.key.write_bytes(rotated.key_pem)  # another change, still not a loadable pair: no second error
        for _ in range(5):  # several reload rounds later ...
            with client(pki, pki.gateway) as http:
                assert http.get(served.url + "/whoami").status_code == 200  # ... new connections still get in
        assert peer_certificate(served.port, pki.client_context(pki.gateway)) == pki.server.issued.certificate
        assert served.log().count(ERROR_LINE) == 1
        server.cert.write_bytes(rotated.cert_pem)  # the writer finishes
        wait_until(lambda: peer_certificate(served.port, pki.client_context(pki.gateway)) == rotated.certificate)
        assert RELOADED_LINE in served.log()


def test_a_certificate_without_its_new_key_keeps_the_old_pair(pki: Pki, tmp_path: Path) -> None:
    server = own_copy(pki, tmp_path)
    with Served({**pki.server_env(server), **RELOAD}, log_dir=tmp_path) as served:
        rotated = pki.ca.issue("orders")
        server.cert.write_bytes(rotated.cert_pem)  # the key is still the old one: a mismatched pair
        wait_until(lambda: ERROR_LINE in served.log())
        assert peer_certificate(served.port, pki.client_context(pki.gateway)) == pki.server.issued.certificate
        assert "mtls.cert_path/key_path" in served.log()
        server.key.write_bytes(rotated.key_pem)
        wait_until(lambda: peer_certificate(served.port, pki.client_context(pki.gateway)) == rotated.certificate)


def test_a_new_ca_is_trusted_and_the_old_one_no_longer_is(pki: Pki, tmp_path: Path) -> None:
    server = own_copy(pki, tmp_path)
    ca_path = tmp_path / "trust" / "ca.crt"
    ca_path.parent.mkdir()
    shutil.copy(pki.ca_path, ca_path)
    with Served({**pki.server_env(server, ca=ca_path), **RELOAD}, log_dir=tmp_path) as served:
        new_ca = CertificateAuthority.create()
        new_ca.write(tmp_path / "new-ca")
        caller = Files(tmp_path / "new-gateway", new_ca.issue("api-gateway"))
        caller.issued.write(caller.directory)
        server_cert = new_ca.issue("orders")
        rewrite(server, server_cert)
        ca_path.write_bytes(new_ca.cert_pem)
        new_trust = tmp_path / "new-ca" / "ca.crt"
        wait_until(lambda: RELOADED_LINE in served.log())
        with httpx.Client(verify=pki.client_context(caller, ca=new_trust), trust_env=False, timeout=5.0) as http:
            assert http.get(served.url + "/whoami").json()["identity"] == GATEWAY
        old_caller_trusting_new_server = pki.client_context(pki.gateway, ca=new_trust)
        with (
            httpx.Client(verify=old_caller_trusting_new_server, trust_env=False, timeout=5.0) as http,
            pytest.raises(httpx.TransportError),
        ):
            http.get(served.url + "/whoami")
