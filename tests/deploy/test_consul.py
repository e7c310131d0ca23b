"""deploy/consul: the service definition registers what the mesh's self-registration registers, and the ACL
policy grants exactly what that and discovery need."""

from __future__ import annotations

import json
import re

import pytest

from fastapi_mesh import MeshSettings
from fastapi_mesh.discovery.consul import ConsulDiscovery
from tests.deploy.manifests import DEPLOY, env_file, pod_settings

CONSUL = DEPLOY / "consul"
#: ``kind "name" { policy = "..." }`` blocks of an ACL policy (the HCL the policy file is written in).
RULE = re.compile(r'^(\w+)\s+"([^"]*)"\s*\{\s*policy\s*=\s*"(\w+)"\s*\}', re.MULTILINE)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> MeshSettings:
    """The settings deploy/consul/user-service.env gives."""
    return pod_settings(env_file(CONSUL / "user-service.env"), monkeypatch)


def _snake(name: str) -> str:
    return {"DeregisterCriticalServiceAfter": "deregister_critical_service_after"}.get(name, name.lower())


def test_service_definition_registers_what_self_registration_sends(settings: MeshSettings) -> None:
    """user-service.json (for an agent's config directory) carries the ID, name, address, port, tags, meta and
    /health/ready check that the mesh sends to PUT /v1/agent/service/register for the same settings."""
    consul = ConsulDiscovery(settings.discovery, service_name=settings.service_name, mtls=settings.mtls)
    registration = consul.registration()
    expected = {_snake(k): v for k, v in registration.items() if k != "Check"}
    expected["check"] = {_snake(k): v for k, v in registration["Check"].items()}
    definition = json.loads((CONSUL / "user-service.json").read_text(encoding="utf-8"))
    assert definition == {"service": expected}
    assert settings.discovery.register and settings.discovery.backend == "consul"


def test_acl_policy_grants_write_on_its_own_name_and_read_for_discovery(settings: MeshSettings) -> None:
    """The policy lets the service register and deregister itself (service:write on its own name only) and
    read the health of the services it calls (service_prefix and node_prefix read), nothing more."""
    text = (CONSUL / "mesh-service-policy.hcl").read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    rules = RULE.findall(code)
    assert len(rules) == code.count("{"), "every block is a simple `kind \"name\" { policy = ... }` rule"
    assert sorted(rules) == sorted(
        [("service", settings.service_name, "write"), ("service_prefix", "", "read"), ("node_prefix", "", "read")]
    )
