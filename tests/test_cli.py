"""The fastapi-mesh command line: ``check`` and ``policy <service>``."""

import json
import os

import pytest

from fastapi_mesh import __version__
from fastapi_mesh.cli import main
from fastapi_mesh.settings import MeshSettings

POLICY_KEYS = {
    "service",
    "load_balancer",
    "circuit_breaker",
    "retry",
    "outlier_detection",
    "bulkhead",
    "routing",
    "active_health_check",
}


@pytest.fixture(autouse=True)
def _no_mesh_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without any MESH_* variable (settings read them case-insensitively)."""
    for key in list(os.environ):
        if key.upper().startswith("MESH_"):
            monkeypatch.delenv(key)


def test_check_prints_settings_json(capsys: pytest.CaptureFixture[str]) -> None:
    """`check` prints the settings as JSON and returns 0."""
    assert main(["check"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    assert data == MeshSettings().model_dump(mode="json")
    assert data["service_name"] == "app"
    assert data["environment"] == "development"
    assert data["retry"]["max_retries"] == 2
    assert data["services"] == {}


def test_check_reflects_env(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` shows values from MESH_* variables, with the environment preset applied."""
    monkeypatch.setenv("MESH_SERVICE_NAME", "api-gateway")
    monkeypatch.setenv("MESH_ENVIRONMENT", "production")
    monkeypatch.setenv("MESH_CIRCUIT_BREAKER__TIMEOUT", "250ms")
    monkeypatch.setenv("MESH_DISCOVERY__ENDPOINTS", '{"user-service": ["http://10.0.0.1:8080"]}')
    assert main(["check"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["service_name"] == "api-gateway"
    assert data["environment"] == "production"
    assert data["circuit_breaker"]["timeout"] == 0.25
    assert data["circuit_breaker"]["failure_threshold"] == 20
    assert data["retry"]["backoff_strategy"] == "fibonacci"
    assert data["discovery"]["endpoints"] == {
        "user-service": [{"url": "http://10.0.0.1:8080", "weight": 1, "metadata": {}, "zone": None}]
    }


def test_policy_prints_effective_policy(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`policy user-service` prints that service's effective policy JSON and returns 0."""
    monkeypatch.setenv("MESH_ENVIRONMENT", "production")
    monkeypatch.setenv("MESH_SERVICES", '{"user-service": {"retry": {"max_retries": 1}}}')
    assert main(["policy", "user-service"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    assert set(data) == POLICY_KEYS
    assert data["service"] == "user-service"
    assert data["retry"]["max_retries"] == 1
    assert data["retry"]["backoff_strategy"] == "fibonacci"
    assert data["circuit_breaker"]["failure_threshold"] == 20
    assert data == MeshSettings().for_service("user-service").model_dump(mode="json")


def test_policy_of_unconfigured_service_is_global(capsys: pytest.CaptureFixture[str]) -> None:
    """`policy` for a service with no override prints the global sections."""
    assert main(["policy", "user-service"]) == 0
    data = json.loads(capsys.readouterr().out)
    settings = MeshSettings()
    assert data["service"] == "user-service"
    assert data["retry"] == settings.retry.model_dump(mode="json")
    assert data["circuit_breaker"] == settings.circuit_breaker.model_dump(mode="json")


@pytest.mark.parametrize("argv", [["check"], ["policy", "user-service"]])
def test_invalid_env_value_returns_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """A bad MESH_* value makes the command return 1 and name the field and variable on stderr."""
    monkeypatch.setenv("MESH_RETRY__MAX_RETRIES", "-1")
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("invalid mesh settings: ")
    assert "\nretry.max_retries\n" in err
    assert "(set by MESH_RETRY__MAX_RETRIES='-1')" in err


def test_unknown_env_var_returns_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped MESH_ variable makes `check` return 1 naming it on stderr."""
    monkeypatch.setenv("MESH_RETRY_MAX_RETRIES", "4")
    assert main(["check"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(
        "invalid mesh settings: unknown setting in environment variable MESH_RETRY_MAX_RETRIES: 'retry_max_retries'"
    )


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command argparse exits with status 2 and a usage message."""
    with pytest.raises(SystemExit) as exc_info:
        main([])
    assert exc_info.value.code == 2
    assert "usage: fastapi-mesh" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version and exits 0."""
    with pytest.raises(SystemExit) as exc_info:
        main(["--version"])
    assert exc_info.value.code == 0
    assert capsys.readouterr().out == f"fastapi-mesh {__version__}\n"


def test_check_reports_a_discovery_class_that_cannot_be_imported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check` fails naming the setting and its variable when the configured backend cannot be built."""
    monkeypatch.setenv("MESH_DISCOVERY__BACKEND", "custom")
    monkeypatch.setenv("MESH_DISCOVERY__CUSTOM_CLASS", "no_such_module_here:Finder")
    assert main(["check"]) == 1
    err = capsys.readouterr().err
    assert "discovery.custom_class" in err
    assert "MESH_DISCOVERY__CUSTOM_CLASS" in err
    assert "no_such_module_here" in err


def test_check_builds_a_consul_backend_without_contacting_consul(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Building a backend opens nothing: `check` passes for consul with no agent running."""
    monkeypatch.setenv("MESH_DISCOVERY__BACKEND", "consul")
    monkeypatch.setenv("MESH_DISCOVERY__CONSUL_URL", "http://127.0.0.1:1")
    assert main(["check"]) == 0
    assert '"backend": "consul"' in capsys.readouterr().out


def test_check_accepts_a_custom_discovery_backend(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`custom` is a valid backend whose object the application supplies: `check` passes and says so."""
    monkeypatch.setenv("MESH_DISCOVERY__BACKEND", "custom")
    assert main(["check"]) == 0
    captured = capsys.readouterr()
    assert '"backend": "custom"' in captured.out
    assert "the Discovery object is the application's" in captured.err


def test_a_reader_that_stops_early_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fastapi-mesh policy svc | head -1`: when the pipe closes under the output, exit 0, no traceback."""
    import sys

    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError

        def flush(self) -> None:
            raise BrokenPipeError

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["policy", "svc"]) == 0
