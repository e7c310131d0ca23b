"""deploy/docker/app.py, the demo image's app, as the manifests run it: user-service, and api-gateway calling
it through the mesh, each under a real uvicorn, configured by MESH_* variables only."""

from __future__ import annotations

import importlib.util
import json
import os
from types import ModuleType

import httpx
import pytest

from tests.deploy.manifests import DEPLOY
from tests.observability.support import serve_on_port

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

APP = DEPLOY / "docker" / "app.py"


def _load(name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of app.py built with ``env`` as its only MESH_* and DEMO_* variables."""
    with monkeypatch.context() as patch:
        for key in list(os.environ):
            if key.upper().startswith(("MESH_", "DEMO_")):
                patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        spec = importlib.util.spec_from_file_location(name, APP)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


async def test_gateway_reaches_user_service_through_the_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    """user-service answers from its pod; the gateway (DEMO_UPSTREAM=user-service) answers with user-service's
    body and its own name; both serve the probes; with user-service gone the gateway degrades, still 200."""
    users = _load("demo_user_service", {"MESH_SERVICE_NAME": "user-service"}, monkeypatch)
    async with serve_on_port(users.app) as users_url:
        endpoints = json.dumps({"user-service": [users_url]})
        gateway = _load(
            "demo_gateway",
            {
                "MESH_SERVICE_NAME": "api-gateway",
                "MESH_DISCOVERY__ENDPOINTS": endpoints,
                "MESH_DISCOVERY__CRITICAL_SERVICES": '["user-service"]',
                "MESH_RETRY__MAX_RETRIES": "0",
                "DEMO_UPSTREAM": "user-service",
            },
            monkeypatch,
        )
        async with serve_on_port(gateway.app) as gateway_url, httpx.AsyncClient(timeout=5) as http:
            direct = (await http.get(f"{users_url}/api/users")).json()
            assert direct["service"] == "user-service" and len(direct["users"]) == 3
            via = (await http.get(f"{gateway_url}/api/users")).json()
            assert via["served_by"] == direct["served_by"] and via["via"] == gateway.POD
            for base in (users_url, gateway_url):
                for probe in ("/health/live", "/health/ready", "/health/startup"):
                    assert (await http.get(base + probe)).status_code == 200, (base, probe)
            status = (await http.get(f"{gateway_url}/mesh/status")).json()
            assert status["requests"]["user-service"]["successes"] == 1
    async with serve_on_port(gateway.app) as gateway_url, httpx.AsyncClient(timeout=5) as http:
        degraded = (await http.get(f"{gateway_url}/api/users")).json()
    assert degraded == {"users": [], "degraded": True}
