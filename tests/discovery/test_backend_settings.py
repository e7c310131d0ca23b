"""Choosing a backend from settings: what each one needs, and the errors that name the setting to fix."""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from fastapi_mesh import MeshClient, MeshSettings
from fastapi_mesh.discovery import DiscoveryConfigError, Endpoint, Publish, StaticDiscovery, build_discovery
from fastapi_mesh.settings import DiscoveryConfig, split_nameserver


class NoArgs:
    """A custom backend built with no arguments."""

    async def start(self, publish: Publish) -> None:
        publish("users", [Endpoint("http://10.0.0.7:80")])

    def watch(self, service: str) -> None:
        return None

    async def stop(self) -> None:
        return None


class WithConfig(NoArgs):
    def __init__(self, config: DiscoveryConfig) -> None:
        self.config = config


class NotADiscovery:
    def watch(self, service: str) -> None:
        return None


@pytest.fixture
def plugin_module(monkeypatch: pytest.MonkeyPatch) -> str:
    module = types.ModuleType("mesh_test_plugins")
    module.NoArgs = NoArgs  # type: ignore[attr-defined]
    module.WithConfig = WithConfig  # type: ignore[attr-defined]
    module.NotADiscovery = NotADiscovery  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mesh_test_plugins", module)
    return "mesh_test_plugins"


def _custom(path: str) -> MeshSettings:
    return MeshSettings(discovery={"backend": "custom", "custom_class": path})


def test_custom_class_by_colon_or_dotted_path(plugin_module: str) -> None:
    assert isinstance(build_discovery(_custom(f"{plugin_module}:NoArgs")), NoArgs)
    built = build_discovery(_custom(f"{plugin_module}.WithConfig"))
    assert isinstance(built, WithConfig)
    assert built.config.backend == "custom"


@pytest.mark.anyio
async def test_a_custom_class_from_settings_publishes_into_routing(plugin_module: str) -> None:
    async with MeshClient(_custom(f"{plugin_module}:NoArgs")) as client:
        assert [e.url for e in client._rt.services.get("users").balancer.endpoints] == ["http://10.0.0.7:80"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("mesh_no_such_module:Finder", "cannot import 'mesh_no_such_module'"),
        ("mesh_test_plugins:Missing", "has no 'Missing'"),
        ("mesh_test_plugins:NotADiscovery", "does not implement start(publish), watch(service) and stop()"),
    ],
)
def test_a_custom_class_that_cannot_be_used_names_the_setting(plugin_module: str, path: str, expected: str) -> None:
    with pytest.raises(DiscoveryConfigError) as caught:
        build_discovery(_custom(path))
    message = str(caught.value)
    assert expected in message
    assert "discovery.custom_class (MESH_DISCOVERY__CUSTOM_CLASS)" in message


def test_custom_without_a_class_or_object_says_how_to_give_one() -> None:
    with pytest.raises(DiscoveryConfigError, match=r"Mesh\(settings, discovery=\.\.\.\)"):
        MeshClient(MeshSettings(discovery={"backend": "custom"}))
    # An object given in code needs no class path.
    assert MeshClient(MeshSettings(discovery={"backend": "custom"}), discovery=StaticDiscovery()) is not None


def test_kubernetes_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes_asyncio", None)  # import fails as when not installed
    with pytest.raises(DiscoveryConfigError) as caught:
        build_discovery(MeshSettings(discovery={"backend": "kubernetes"}))
    assert "pip install 'fastapi-mesh[kubernetes]'" in str(caught.value)
    assert "MESH_DISCOVERY__BACKEND" in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value", "field", "words"),
    [
        ("MESH_DISCOVERY__BACKEND", "etcd", "discovery.backend", "'static', 'consul'"),
        ("MESH_DISCOVERY__CONSUL_URL", "consul:8500", "discovery.consul_url", "http:// or https://"),
        ("MESH_DISCOVERY__NAMESERVERS", '["10.96.0.10"]', "discovery.nameservers", "must be host:port"),
        ("MESH_DISCOVERY__NAMESERVERS", '["dns.local:53"]', "discovery.nameservers", "is not an IP address"),
        ("MESH_DISCOVERY__NAMESPACE", "Prod_NS", "discovery.namespace", "not a Kubernetes namespace name"),
        ("MESH_DISCOVERY__CONSUL_WAIT", "20m", "discovery.consul_wait", "less than or equal to 600"),
        ("MESH_DISCOVERY__CUSTOM_CLASS", "not a path", "discovery.custom_class", "must be a dotted path"),
    ],
)
def test_bad_discovery_settings_fail_at_start_up_naming_field_and_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, words: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        MeshSettings()
    message = str(caught.value)
    assert field in message
    assert variable in message
    assert words in message


@pytest.mark.parametrize(
    ("discovery", "words"),
    [
        ({"backend": "consul", "register": True}, "discovery.register needs discovery.service_port"),
        ({"backend": "kubernetes-dns", "port_name": None}, "needs discovery.port"),
        ({"backend": "consul", "backoff": 10, "max_backoff": 1}, "max_backoff must not be below"),
    ],
)
def test_settings_that_contradict_each_other_are_refused(discovery: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        MeshSettings(discovery=discovery)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:5353", ("127.0.0.1", 5353)), ("[fd00::a]:53", ("fd00::a", 53)), (" 10.0.0.1:53 ", ("10.0.0.1", 53))],
)
def test_nameservers_are_host_and_port(text: str, expected: Sequence[object]) -> None:
    assert split_nameserver(text) == tuple(expected)


def test_the_secret_token_is_never_shown() -> None:
    settings = MeshSettings(discovery={"backend": "consul", "consul_token": "s3cr3t-token"})
    assert "s3cr3t-token" not in repr(settings)
    assert "s3cr3t-token" not in settings.model_dump_json()
    assert settings.discovery.consul_token is not None
    assert settings.discovery.consul_token.get_secret_value() == "s3cr3t-token"
