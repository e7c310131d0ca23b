"""Settings at their edges: whole-field overrides, strict endpoint URLs, variables named right, copies."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fastapi_mesh import MeshSettings
from fastapi_mesh.cli import main


def test_a_service_split_replaces_the_global_split() -> None:
    """``routing.split`` given for a service replaces the global dict; ``{}`` clears it."""
    settings = MeshSettings(
        routing={"split": {"v1": 100}},
        services={"canary": {"routing": {"split": {"v2": 100}}}, "plain": {"routing": {"split": {}}}},
    )
    assert settings.for_service("canary").routing.split == {"v2": 100}
    assert settings.for_service("plain").routing.split == {}
    assert settings.for_service("other").routing.split == {"v1": 100}


@pytest.mark.parametrize(
    "url",
    [
        " http://10.0.0.1:8080",
        "http://256.1.1.1:80",
        "http://ho\tst:80",
        "http://bad host:80",
        "http://-leading.example",
        "http://a..b:80",
        "https://admin:s3cret@10.0.0.1:8443",
    ],
)
def test_malformed_endpoint_urls_fail_at_construction(url: str) -> None:
    """Whitespace, impossible addresses, bad host names and credentials are refused, naming the field."""
    with pytest.raises(ValidationError, match=r"discovery\.endpoints\.svc\.0\.url[\s\S]*malformed endpoint URL"):
        MeshSettings(discovery={"endpoints": {"svc": [url]}})


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1:8080", "https://user-service.default.svc.cluster.local", "http://[::1]:80", "http://my_host"],
)
def test_good_endpoint_urls_pass(url: str) -> None:
    """Addresses, DNS names (underscores too, as in SRV-style names) and IPv6 literals are accepted."""
    assert MeshSettings(discovery={"endpoints": {"svc": [url]}}).discovery.endpoints["svc"][0].url == url


def test_check_reports_a_malformed_endpoint_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fastapi-mesh check`` exits 1 with a one-line reason for a URL httpx could not use."""
    monkeypatch.setenv("MESH_DISCOVERY__ENDPOINTS", '{"u": [" http://10.0.0.1:8080"]}')
    assert main(["check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("invalid mesh settings:") and "Traceback" not in err
    assert "MESH_DISCOVERY__ENDPOINTS" in err


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("MESH_RETRY__RETRY_ON_STATUS", "502,503", "retry.retry_on_status"),
        ("MESH_LOAD_BALANCER__TRUSTED_PROXIES", "10.0.0.0/8", "load_balancer.trusted_proxies"),
    ],
)
def test_a_list_variable_that_is_not_json_names_field_and_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    """A list written as ``a,b`` fails naming the setting and the variable, and says lists are JSON."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match="not valid JSON") as caught:
        MeshSettings()
    assert f"{field} (set by {variable}={value!r})" in str(caught.value)


def test_a_bad_value_from_code_does_not_blame_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The constructor's value wins over the variable, so its error names no variable."""
    monkeypatch.setenv("MESH_RETRY__MAX_RETRIES", "3")
    with pytest.raises(ValidationError) as caught:
        MeshSettings(retry={"max_retries": -1})
    assert "MESH_RETRY__MAX_RETRIES" not in str(caught.value)
    monkeypatch.setenv("MESH_RETRY__MAX_RETRIES", "-1")
    with pytest.raises(ValidationError, match="set by MESH_RETRY__MAX_RETRIES='-1'"):
        MeshSettings()


@pytest.mark.parametrize(
    "variable", ["MESH_SERVICE_NAME__FOO", "MESH_ZONE__X", "MESH_ENVIRONMENT__FOO", "MESH_RETRY__MAXRETRIES"]
)
def test_a_variable_naming_no_setting_at_any_level_is_an_error(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """A typo below a scalar setting, or inside a section, is refused, not ignored."""
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ValueError, match=f"unknown setting in environment variable {variable}"):
        MeshSettings()


def test_variables_below_free_form_maps_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service name is a key of ``services``, not a setting name: a variable through it is fine."""
    monkeypatch.setenv("MESH_SERVICES__PAYMENT__RETRY__MAX_RETRIES", "0")
    assert MeshSettings().for_service("payment").retry.max_retries == 0


def test_model_copy_with_update_validates_and_recomputes_policies() -> None:
    """A copy with ``update`` is validated like new settings (service overrides given as dicts work, bad
    values fail), and cannot switch environment, whose preset is already applied."""
    settings = MeshSettings(retry={"max_retries": 2})
    copied = settings.model_copy(update={"services": {"x": {"retry": {"max_retries": 5}}}})
    assert copied.for_service("x").retry.max_retries == 5
    assert copied.for_service("y").retry.max_retries == 2
    with pytest.raises(ValidationError):
        settings.model_copy(update={"retry": {"max_retries": -1}})
    with pytest.raises(ValueError, match="cannot change environment"):
        settings.model_copy(update={"environment": "production"})
    assert settings.model_copy().retry.max_retries == 2
