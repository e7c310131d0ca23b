"""Who may call what: ``@mesh.policy(allow=...)``, ``require_identity(...)`` and ``mtls.allow``, over real mTLS
to ``fastapi-mesh serve``; denials answer 403 naming no identity, and are counted and logged."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families

from fastapi_mesh import Mesh, MeshSettings
from fastapi_mesh.security.identity import AllowList, peer_identity
from tests.security.serve_support import BACKUP, GATEWAY, USERS, Pki, Served, client

pytestmark = pytest.mark.integration

IDENTITIES = ("spiffe://", "api-gateway", "user-service", "backup", "cluster.local", "ops")


def denied_counts(served: Served) -> dict[str, float]:
    text = httpx.get(served.plain_url + "/metrics", trust_env=False, timeout=5.0).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "mesh_authorization_denied":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["route"]] = sample.value
    return counts


def assert_forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403
    assert response.json() == {"detail": "forbidden"}
    assert not any(part in response.text for part in IDENTITIES)  # names neither the caller nor the allowed


def test_a_route_allow_list_lets_its_identity_in_and_refuses_another_with_a_403_naming_no_identity(
    pki: Pki, served: Served
) -> None:
    before = denied_counts(served).get("/orders/{order_id}", 0.0)
    with client(pki, pki.gateway) as gateway, client(pki, pki.users) as users:
        allowed = gateway.get(served.url + "/orders/42")
        refused = users.get(served.url + "/orders/42")
    assert allowed.status_code == 200 and allowed.json() == {"order": "42"}
    assert_forbidden(refused)
    assert denied_counts(served)["/orders/{order_id}"] == before + 1  # by route template, never the raw path
    assert f"authorization denied: caller {USERS} on route /orders/{{order_id}}" in served.log()


def test_require_identity_accepts_a_prefix_and_refuses_others(pki: Pki, served: Served) -> None:
    with client(pki, pki.backup) as backup, client(pki, pki.gateway) as gateway:
        allowed = backup.get(served.url + "/ops")
        refused = gateway.get(served.url + "/ops")
    assert allowed.status_code == 200
    assert_forbidden(refused)
    assert f"authorization denied: caller {GATEWAY} on route /ops" in served.log()
    assert BACKUP not in served.log().split("authorization denied", 1)[-1]  # the allowed caller is not logged


def test_a_certificate_without_a_spiffe_id_has_no_identity_and_passes_no_allow_list(pki: Pki, served: Served) -> None:
    with client(pki, pki.no_spiffe) as legacy:
        whoami = legacy.get(served.url + "/whoami")
        refused = legacy.get(served.url + "/orders/1")
    assert whoami.status_code == 200 and whoami.json()["identity"] is None  # the CA signed it: it gets in
    assert_forbidden(refused)


def test_the_unmatched_series_exists_before_any_denial_and_counts_unknown_paths(pki: Pki, served: Served) -> None:
    counts = denied_counts(served)
    assert "<unmatched>" in counts
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        assert http.get(served.plain_url + "/no/such/path").status_code == 403
    assert denied_counts(served)["<unmatched>"] == counts["<unmatched>"] + 1


def test_app_wide_allow_refuses_every_route_to_other_callers(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = {**pki.server_env(), "MESH_MTLS__ALLOW": json.dumps([GATEWAY, "spiffe://cluster.local/ns/ops/*"])}
    with Served(env, log_dir=tmp_path_factory.mktemp("logs")) as served:
        with client(pki, pki.gateway) as gateway, client(pki, pki.users) as users, client(pki, pki.backup) as backup:
            allowed = {path: gateway.get(served.url + path).status_code for path in ("/whoami", "/health/ready")}
            backup_ops = backup.get(served.url + "/ops").status_code
            refused = {path: users.get(served.url + path) for path in ("/whoami", "/health/ready", "/metrics", "/nope")}
        with httpx.Client(trust_env=False, timeout=5.0) as plain:
            probe = plain.get(served.plain_url + "/health/ready").status_code  # the plain port is not mTLS
        counts = denied_counts(served)
        log = served.log()
    assert allowed == {"/whoami": 200, "/health/ready": 200}
    assert backup_ops == 200
    for response in refused.values():
        assert_forbidden(response)
    assert probe == 200

    assert counts["/whoami"] == 1 and counts["/health/ready"] == 1 and counts["<unmatched>"] == 1
    assert log.count(f"authorization denied: caller {USERS}") == 4
    assert "not on mtls.allow" in log
    assert "mtls.allow is set but this server does not enforce it" not in log


def test_allow_lists_match_exact_ids_prefixes_and_any_and_never_a_missing_identity() -> None:
    allow = AllowList([GATEWAY, "spiffe://cluster.local/ns/ops/*"])
    assert allow.allows(GATEWAY)
    assert allow.allows(BACKUP)
    assert not allow.allows(GATEWAY + "-evil")
    assert not allow.allows("spiffe://cluster.local/ns/opsx/sa/a")
    assert not allow.allows(None)
    assert AllowList(["*"]).allows(USERS) and not AllowList(["*"]).allows(None)
    assert not AllowList([]).allows(GATEWAY)
    for bad in ("api-gateway", "spiffe://*/ns/x", "http://cluster.local/ns/default/sa/a"):
        with pytest.raises(ValueError, match="not a SPIFFE ID"):
            AllowList([bad])


# ---------------------------------------------------------------------------------- in process, no network
# The TLS extension a server provides is stood in for by a wrapper that puts a certificate into the scope.


def with_certificate(app: Any, pem: bytes | None, error: str | None = None) -> Any:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and pem is not None:
            tls = {"client_cert_chain": [pem.decode()], "client_cert_error": error}
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": tls}
        await app(scope, receive, send)

    return asgi


def policy_app(mesh: Mesh) -> FastAPI:
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)

    @app.get("/sync/{item}")
    @mesh.policy(allow=[GATEWAY], timeout=2.0)
    def sync_route(item: str, request: Request) -> dict[str, str]:  # sync, and with its own Request parameter
        return {"item": item, "path": request.url.path}

    @app.get("/whoami")
    async def whoami(caller: str | None = Depends(peer_identity)) -> dict[str, str | None]:
        return {"identity": caller}

    return app


async def call(app: Any, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://orders") as http:
        return await http.get(path)


@pytest.mark.anyio
async def test_a_policy_allow_list_guards_a_sync_route_and_counts_by_template(pki: Pki) -> None:
    mesh = Mesh(MeshSettings(service_name="orders"))
    app = policy_app(mesh)
    async with LifespanManager(app):
        allowed = await call(with_certificate(app, pki.gateway.issued.cert_pem), "/sync/7")
        refused = await call(with_certificate(app, pki.users.issued.cert_pem), "/sync/7")
        anonymous = await call(app, "/sync/7")
    assert allowed.json() == {"item": "7", "path": "/sync/7"}
    assert_forbidden(refused)
    assert_forbidden(anonymous)
    assert mesh.authorization.metrics is not None
    assert mesh.authorization.metrics.counter.labels("/sync/{item}")._value.get() == 2


@pytest.mark.anyio
async def test_an_unverified_or_ambiguous_certificate_gives_no_identity(pki: Pki) -> None:
    app = policy_app(Mesh(MeshSettings(service_name="orders")))
    no_uri_pem = pki.ca.issue("legacy", identity=None, dns_names=["legacy"]).cert_pem
    async with LifespanManager(app):
        unverified = await call(with_certificate(app, pki.gateway.issued.cert_pem, error="expired"), "/whoami")
        garbage = await call(with_certificate(app, b"-----BEGIN CERTIFICATE-----\nnot one\n"), "/whoami")
        no_uri = await call(with_certificate(app, no_uri_pem), "/whoami")
        verified = await call(with_certificate(app, pki.gateway.issued.cert_pem), "/whoami")
    assert [r.json()["identity"] for r in (unverified, garbage, no_uri)] == [None, None, None]
    assert verified.json()["identity"] == GATEWAY


@pytest.mark.anyio
async def test_mtls_allow_under_another_server_is_reported_as_not_enforced(caplog: pytest.LogCaptureFixture) -> None:
    mesh = Mesh(MeshSettings(service_name="orders", mtls={"allow": [GATEWAY]}))
    app = policy_app(mesh)
    with caplog.at_level(logging.WARNING, logger="fastapi_mesh.security"):
        async with LifespanManager(app):
            pass
    assert "mtls.allow is set but this server does not enforce it" in caplog.text


def test_policy_allow_takes_a_list_not_a_string() -> None:
    mesh = Mesh(MeshSettings(service_name="orders"))
    with pytest.raises(TypeError, match="list of identities"):
        mesh.policy(allow=GATEWAY)
    with pytest.raises(ValueError, match="not a SPIFFE ID"):
        mesh.policy(allow=["api-gateway"])
