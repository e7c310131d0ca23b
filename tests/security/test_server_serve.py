"""``fastapi-mesh serve`` as a process: graceful shutdown still drains first, settings it refuses before
listening, several workers, and plain HTTP when mTLS is off."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from fastapi_mesh.cli import main
from tests.security.serve_support import GATEWAY, Pki, Served, client

pytestmark = pytest.mark.integration


@pytest.fixture
def no_mesh_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.upper().startswith("MESH_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_sigterm_under_serve_turns_readiness_503_first_and_lets_requests_in_flight_finish(
    pki: Pki, tmp_path: Path
) -> None:
    drain, grace = 1.5, 10.0
    env = {
        **pki.server_env(),
        "MESH_HEALTH_CHECK__DRAIN_DELAY": str(drain),
        "MESH_HEALTH_CHECK__SHUTDOWN_GRACE": str(grace),
    }
    with Served(env, log_dir=tmp_path) as served, ThreadPoolExecutor(4) as pool:
        with client(pki, pki.gateway) as http, httpx.Client(trust_env=False, timeout=2.0) as plain:
            in_flight = [pool.submit(http.get, served.url + "/slow", params={"seconds": 2.5}) for _ in range(3)]
            time.sleep(0.3)  # the requests have arrived
            signalled = time.monotonic()
            served.terminate()
            plain_codes, tls_codes = [], []
            while time.monotonic() - signalled < drain * 0.6:
                plain_codes.append(plain.get(served.plain_url + "/health/ready").status_code)
                with client(pki, pki.gateway) as fresh:  # new mTLS connections are still taken during the drain
                    tls_codes.append(fresh.get(served.url + "/health/ready").status_code)
            live = plain.get(served.plain_url + "/health/live").status_code
            responses = [future.result(timeout=15) for future in in_flight]
        exit_code = served.exit_code(timeout=drain + grace)
        exited_after = time.monotonic() - signalled
    assert plain_codes and set(plain_codes) == {503}
    assert tls_codes and set(tls_codes) == {503}
    assert live == 200
    assert [r.status_code for r in responses] == [200] * 3
    assert exited_after < drain + grace
    assert exit_code in (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM it handled, once it has shut down
    assert "Application shutdown complete" in served.log()


def test_serve_refuses_files_that_do_not_load_naming_the_setting(
    pki: Pki, no_mesh_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in {**pki.server_env(), "MESH_MTLS__CERT_PATH": str(pki.root / "missing.crt")}.items():
        no_mesh_env.setenv(key, value)
    assert main(["serve", "tests.security.server_app:app", "--port", "1"]) == 1
    error = capsys.readouterr().err
    assert "mtls.cert_path/key_path: cannot load" in error and "missing.crt" in error


def test_serve_refuses_a_ca_that_does_not_load(
    pki: Pki, no_mesh_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in {**pki.server_env(), "MESH_MTLS__CA_PATH": str(pki.server.key)}.items():
        no_mesh_env.setenv(key, value)
    assert main(["serve", "tests.security.server_app:app", "--port", "1"]) == 1
    assert "mtls.ca_path: cannot load the CA bundle" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MESH_MTLS__ALLOW": json.dumps([GATEWAY])}, "mtls.allow needs mtls.enabled"),
        ({"MESH_MTLS__PLAIN_PORT": "8081"}, "mtls.plain_port needs mtls.enabled"),
        ({"MESH_MTLS__ALLOW": '["api-gateway"]'}, "is not a SPIFFE ID"),
    ],
)
def test_serve_refuses_settings_it_cannot_honour(
    env: dict[str, str], message: str, no_mesh_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in env.items():
        no_mesh_env.setenv(key, value)
    assert main(["serve", "tests.security.server_app:app", "--port", "1"]) == 1
    assert message in capsys.readouterr().err


def test_serve_refuses_a_plain_port_that_is_its_own_port(
    pki: Pki, no_mesh_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in {**pki.server_env(), "MESH_MTLS__PLAIN_PORT": "8443"}.items():
        no_mesh_env.setenv(key, value)
    assert main(["serve", "tests.security.server_app:app", "--port", "8443"]) == 1
    assert "mtls.plain_port 8443 is the server's own --port" in capsys.readouterr().err


def test_several_workers_each_serve_mtls_and_the_plain_port(pki: Pki, tmp_path: Path) -> None:
    with Served(pki.server_env(), args=("--workers", "2"), log_dir=tmp_path) as served:
        deadline = time.monotonic() + 15
        while served.log().count("plain port http://") < 2:  # each worker listens on it (SO_REUSEPORT)
            assert time.monotonic() < deadline, served.log()
            time.sleep(0.05)
        with client(pki, pki.gateway) as http:
            body = http.get(served.url + "/whoami").json()
            refused = httpx.get(served.plain_url + "/whoami", trust_env=False, timeout=5.0).status_code
        served.terminate()
        assert served.exit_code(timeout=15) == 0
    assert body["identity"] == GATEWAY and body["pid"] != served.process.pid  # answered by a worker  # type: ignore[union-attr]
    assert refused == 403


def test_without_mtls_serve_is_plain_http_and_no_caller_has_an_identity(tmp_path: Path) -> None:
    with (
        Served({}, plain=False, tls=False, log_dir=tmp_path) as served,
        httpx.Client(base_url=served.url, trust_env=False, timeout=5.0) as http,
    ):
        whoami = http.get("/whoami").json()
        guarded = http.get("/orders/1")
    assert whoami["identity"] is None and whoami["tls"] is None
    assert guarded.status_code == 403  # an allow list refuses a caller without an identity
