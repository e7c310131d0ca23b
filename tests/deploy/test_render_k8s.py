"""``fastapi-mesh render k8s`` and the ``render`` command line: a Deployment that validates strictly, whose
``MESH_*`` env rebuilds the same settings, and YAML that reads back as the documents."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fastapi_mesh import MeshSettings, render
from fastapi_mesh.cli import main
from tests.deploy.manifests import DEPLOY, core_errors, pod_settings

SETTINGS_CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "production-kubernetes": {
        "service_name": "api-gateway",
        "environment": "production",
        "discovery": {"backend": "kubernetes", "namespace": "shop", "critical_services": ["user-service"]},
    },
    "nulls-need-a-section-variable": {
        "environment": "staging",
        "retry": {"max_elapsed": None, "max_retries": 4},
        "discovery": {"backend": "kubernetes-dns", "port_name": None, "port": 8080},
    },
    "consul-with-a-token": {
        "service_name": "orders",
        "discovery": {
            "backend": "consul",
            "consul_token": "s3cr3t-token",
            "register": True,
            "service_port": 8080,
            "tags": ["v2"],
            "service_meta": {"version": "2"},
        },
    },
    "istio-with-overrides": {
        "mode": "istio",
        "zone": "eu-west-1a",
        "routing": {"split": {"v1": 90, "v2": 10}},
        "services": {"payment-service": {"retry": {"max_retries": 0}, "bulkhead": {"max_concurrent": 5}}},
        "health_check": {"drain_delay": "7.5s", "shutdown_grace": 12},
    },
}


@pytest.mark.parametrize("case", sorted(SETTINGS_CASES))
def test_rendered_env_rebuilds_the_same_settings(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting the rendered MESH_* variables (and the Secret's keys) gives back settings equal to the
    originals, preset values and per-service overrides included."""
    original = MeshSettings(**SETTINGS_CASES[case])
    secrets = {"consul-token": "s3cr3t-token"}
    rebuilt = pod_settings(render.mesh_env(original), monkeypatch, lambda ref: secrets[ref["secretKeyRef"]["key"]])
    assert rebuilt == original


def test_secrets_come_from_a_secret_never_in_clear() -> None:
    """A token is a secretKeyRef to <service>-mesh, and its value appears nowhere in the output."""
    settings = MeshSettings(**SETTINGS_CASES["consul-with-a-token"])
    env = render.mesh_env(settings)
    (token,) = [v for v in env if v["name"] == "MESH_DISCOVERY__CONSUL_TOKEN"]
    assert token["valueFrom"] == {"secretKeyRef": {"name": "orders-mesh", "key": "consul-token"}}
    assert "s3cr3t-token" not in render.to_yaml([render.deployment(settings, image="orders:1")])


def test_only_changed_values_are_written() -> None:
    """A value equal to the preset's is not repeated; a null is written as a section variable."""
    settings = MeshSettings(**SETTINGS_CASES["nulls-need-a-section-variable"])
    env = {v["name"]: v.get("value") for v in render.mesh_env(settings)}
    assert env.pop("MESH_SERVICE_NAME") == "app"
    assert env.pop("MESH_ENVIRONMENT") == "staging"
    assert env.pop("MESH_MODE") == "library"
    assert json.loads(env.pop("MESH_RETRY")) == {"max_retries": 4, "max_elapsed": None}
    assert json.loads(env.pop("MESH_DISCOVERY")) == {"backend": "kubernetes-dns", "port_name": None, "port": 8080}
    assert env == {}


@pytest.mark.parametrize(
    ("environment", "grace", "readiness_period"), [("development", 10, 5), ("staging", 30, 3), ("production", 35, 3)]
)
def test_grace_period_and_probes_follow_the_preset(environment: str, grace: int, readiness_period: int) -> None:
    """terminationGracePeriodSeconds = drain_delay + shutdown_grace + 5 s; readiness probes as often as
    readiness checks run; startup and liveness as docs/health.md gives them."""
    deployment = render.deployment(MeshSettings(environment=environment), image="app:1")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == grace
    container = spec["containers"][0]
    assert container["readinessProbe"]["periodSeconds"] == readiness_period
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] == 120
    assert (container["livenessProbe"]["periodSeconds"], container["livenessProbe"]["failureThreshold"]) == (10, 3)
    odd = render.termination_grace_period(MeshSettings(health_check={"drain_delay": 0.2, "shutdown_grace": 0.3}))
    assert odd == 6


@pytest.mark.parametrize("case", sorted(SETTINGS_CASES))
def test_render_k8s_prints_a_strictly_valid_deployment(
    case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`render k8s` (settings from an --env-file) prints YAML that validates with kubernetes-validate --strict
    and carries the env, image and port asked for."""
    env_file = tmp_path / "mesh.env"
    env = render.mesh_env(MeshSettings(**SETTINGS_CASES[case]))
    lines = [f"{v['name']}={v['value']}" for v in env if "value" in v]
    env_file.write_text("# settings\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    argv = ["render", "k8s", "--env-file", str(env_file), "--image", "registry.example.com/x:2", "--port", "9000"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("# Generated by `fastapi-mesh render k8s --env-file ")
    (deployment,) = list(yaml.safe_load_all(out))
    assert core_errors(deployment) is None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/x:2"
    assert container["ports"] == [{"name": "http", "containerPort": 9000}]
    assert [v for v in container["env"] if "value" in v] == [
        {"name": line.partition("=")[0], "value": line.partition("=")[2]} for line in lines
    ]
    assert all(not k.startswith("MESH_") for k in os.environ)  # the env file did not leak into the process


def test_render_istio_json_is_a_list_and_library_mode_is_noted(capsys: pytest.CaptureFixture[str]) -> None:
    """--format json prints a v1 List of the two resources; in library mode a note on stderr says that the
    application would retry as well."""
    assert main(["render", "istio", "--service", "user-service", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["kind"] == "List" and [i["kind"] for i in data["items"]] == ["DestinationRule", "VirtualService"]
    assert "MESH_MODE=istio" in err


def test_render_istio_in_istio_mode_says_nothing_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESH_MODE", "istio")
    assert main(["render", "istio", "--service", "user-service"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [("MESH_MODE=istio\nnot a variable\n", "mesh.env:2: not a KEY=VALUE line"), ("MESH_MODE=sidecar\n", "mode")],
)
def test_a_bad_env_file_exits_1_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    env_file = tmp_path / "mesh.env"
    env_file.write_text(content, encoding="utf-8")
    assert main(["render", "istio", "--service", "svc", "--env-file", str(env_file)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and message in err


def test_a_missing_env_file_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["render", "k8s", "--env-file", str(tmp_path / "nope.env")]) == 1
    assert "cannot read --env-file" in capsys.readouterr().err


def test_render_without_a_target_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["render"])
    assert exc_info.value.code == 2
    assert "istio" in capsys.readouterr().err


def test_consul_env_file_renders_a_deployment(capsys: pytest.CaptureFixture[str]) -> None:
    """The Consul example settings render (the comment in deploy/consul/user-service.env says so)."""
    assert main(["render", "k8s", "--env-file", str(DEPLOY / "consul" / "user-service.env")]) == 0
    (deployment,) = list(yaml.safe_load_all(capsys.readouterr().out))
    assert core_errors(deployment) is None
    assert deployment["metadata"]["name"] == "user-service"


# ------------------------------------------------------------------------------------------------ yaml

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_scalars = st.none() | st.booleans() | st.integers(-(10**12), 10**12) | _text | st.floats(
    allow_nan=False, allow_infinity=False, width=32
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


@hypothesis_settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(_text, _values, min_size=1, max_size=5), min_size=1, max_size=3))
def test_yaml_reads_back_as_the_documents(documents: list[dict[str, Any]]) -> None:
    """Whatever the keys and values (quotes, colons, numbers as text, YAML words, unicode), PyYAML reads
    the emitted text back as the very documents."""
    assert list(yaml.safe_load_all(render.to_yaml(documents))) == documents


def test_the_module_examples_hold() -> None:
    """The examples in fastapi_mesh.render's docstrings give the output they show."""
    import doctest

    result = doctest.testmod(render)
    assert result.attempted > 0 and result.failed == 0
