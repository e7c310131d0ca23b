"""deploy/istio and ``render istio``: Istio resources valid for the Istio models, generated from the settings.

``user-service.yaml`` must be exactly what ``fastapi-mesh render istio`` prints for ``policy.env``; the
canary's subsets must select the pods the Deployments make; and whatever ``render istio`` prints for a range
of settings must validate with no field unknown to the models.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from fastapi_mesh import MeshSettings, render
from fastapi_mesh.cli import main
from tests.deploy.manifests import (
    DEPLOY,
    ROOT,
    env_file,
    errors,
    find,
    istio_errors,
    kustomize,
    load,
    one,
    pod_settings,
)

ISTIO = DEPLOY / "istio"
POLICY_ENV = "deploy/istio/policy.env"


@pytest.fixture(scope="module")
def build() -> list[dict[str, Any]]:
    return kustomize(ISTIO)


def test_generated_manifests_are_current(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """deploy/istio/user-service.yaml is exactly `fastapi-mesh render istio` for policy.env; regenerate with
    the command in its first line."""
    monkeypatch.chdir(ROOT)
    assert main(["render", "istio", "--service", "user-service", "--env-file", POLICY_ENV]) == 0
    rendered = capsys.readouterr().out
    assert rendered == (ISTIO / "user-service.yaml").read_text(encoding="utf-8"), (
        f"deploy/istio/user-service.yaml is stale; run: fastapi-mesh render istio --service user-service "
        f"--env-file {POLICY_ENV} > deploy/istio/user-service.yaml"
    )


def test_the_virtual_service_routes_90_10_and_canary_testers_to_v2(build: list[dict[str, Any]]) -> None:
    """The default route splits 90/10 between subsets v1 and v2 with the callers' timeout and retries; the
    `x-canary: always` rule comes first and goes to v2."""
    service = one(build, "VirtualService", "user-service")["spec"]
    host = "user-service.shop.svc.cluster.local"
    assert service["hosts"] == [host]
    default = service["http"][-1]
    assert default["name"] == "default"
    assert [(r["destination"]["subset"], r["weight"]) for r in default["route"]] == [("v1", 90), ("v2", 10)]
    assert default["timeout"] == "10s"
    assert default["retries"] == {
        "attempts": 3,
        "perTryTimeout": "2s",
        "retryOn": "connect-failure,refused-stream,reset,gateway-error",
    }
    canary = service["http"][1]
    assert canary["match"] == [{"headers": {"x-canary": {"exact": "always"}}}]
    assert canary["route"] == [{"destination": {"host": host, "subset": "v2"}}]
    unsafe = service["http"][0]
    assert unsafe["match"][0]["method"] == {"regex": "CONNECT|PATCH|POST"}
    assert unsafe["retries"]["retryOn"] == "connect-failure,refused-stream"


def test_subsets_select_the_v1_and_v2_pods(build: list[dict[str, Any]]) -> None:
    """Each DestinationRule subset's labels match the pods of exactly one Deployment, and the Service selects
    both versions."""
    rule = one(build, "DestinationRule", "user-service")["spec"]
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in find(build, "Deployment")
    }
    for subset in rule["subsets"]:
        matching = [name for name, labels in pods.items() if subset["labels"].items() <= labels.items()]
        assert len(matching) == 1, subset
    selector = one(build, "Service", "user-service")["spec"]["selector"]
    assert all(selector.items() <= labels.items() for labels in pods.values())
    assert rule["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] == 5


def test_pods_run_in_istio_mode_with_a_sidecar(build: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Both Deployments get a sidecar and MESH_MODE=istio, so their own calls make no retries."""
    for deployment in find(build, "Deployment"):
        template = deployment["spec"]["template"]
        assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
        (container,) = template["spec"]["containers"]
        settings = pod_settings(container["env"], monkeypatch, lambda _: "shop")
        assert settings.mode == "istio"
        assert settings.for_service("anything").retry.max_retries == 0


def test_the_canary_deployment_is_v1_with_another_version_and_image(build: list[dict[str, Any]]) -> None:
    """user-service-v2 differs from the (Istio-mode) v1 Deployment only in name, version label, replicas and
    image: its probes, env, security and sizing cannot drift."""
    v1 = one(build, "Deployment", "user-service")
    v2 = one(build, "Deployment", "user-service-v2")

    def normalised(deployment: dict[str, Any]) -> dict[str, Any]:
        copy = yaml.safe_load(yaml.safe_dump(deployment))
        copy["metadata"]["name"] = "user-service"
        copy["metadata"]["labels"].pop("app.kubernetes.io/part-of", None)
        copy["spec"].pop("replicas")
        copy["spec"]["selector"]["matchLabels"]["version"] = "v"
        copy["spec"]["template"]["metadata"]["labels"]["version"] = "v"
        container = copy["spec"]["template"]["spec"]["containers"][0]
        container["image"] = container["image"].rsplit(":", 1)[0]
        container["env"].sort(key=lambda variable: variable["name"])
        return copy

    assert normalised(v1) == normalised(v2)
    assert v2["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":2.0.0")


def test_mtls_is_strict_and_authorization_names_the_namespace(build: list[dict[str, Any]]) -> None:
    """PeerAuthentication is STRICT for the namespace; the AuthorizationPolicy's principals live in the
    namespace the resources are deployed to, and it selects user-service's pods."""
    assert one(build, "PeerAuthentication", "default")["spec"] == {"mtls": {"mode": "STRICT"}}
    policy = one(build, "AuthorizationPolicy", "user-service")
    namespace = policy["metadata"]["namespace"]
    principals = [p for rule in policy["spec"]["rules"] for s in rule["from"] for p in s["source"]["principals"]]
    assert principals == [f"cluster.local/ns/{namespace}/sa/api-gateway", "cluster.local/ns/monitoring/sa/prometheus"]
    labels = one(build, "Deployment", "user-service")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_callers_get_the_policy_as_a_config_map(build: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """kustomize turns policy.env into a ConfigMap whose data builds the same settings the render used."""
    (config_map,) = find(build, "ConfigMap")
    assert config_map["metadata"]["name"].startswith("user-service-callers-mesh-")
    expected = pod_settings(env_file(ROOT / POLICY_ENV), monkeypatch)
    data = [{"name": key, "value": value} for key, value in config_map["data"].items()]
    assert pod_settings(data, monkeypatch) == expected


def test_the_fault_injection_example_replaces_the_generated_virtual_service() -> None:
    """fault-injection.yaml is a valid VirtualService for the same host and name (applying it replaces the
    generated one), with a delay and an abort route."""
    (chaos,) = load(ISTIO / "fault-injection.yaml")
    (generated,) = [d for d in load(ISTIO / "user-service.yaml") if d["kind"] == "VirtualService"]
    assert istio_errors(chaos) is None
    assert chaos["metadata"]["name"] == generated["metadata"]["name"]
    assert chaos["spec"]["hosts"] == generated["spec"]["hosts"]
    faults = [route["fault"] for route in chaos["spec"]["http"] if "fault" in route]
    assert [set(fault) for fault in faults] == [{"delay"}, {"abort"}]


# ------------------------------------------------------------------------------------------ render istio

RENDER_CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "production": {"environment": "production"},
    "istio-mode": {"mode": "istio", "environment": "staging"},
    "no-retries": {"retry": {"max_retries": 0}},
    "no-outlier-detection": {"outlier_detection": {"enabled": False}},
    "header-affinity": {"load_balancer": {"session_affinity": True, "affinity_key": "header:X-User"}},
    "cookie-affinity": {"load_balancer": {"session_affinity": True, "affinity_key": "cookie:sid"}},
    "ip-hash": {"load_balancer": {"strategy": "ip-hash"}},
    "random-slow-start": {"load_balancer": {"strategy": "random", "slow_start_window": "30s"}},
    "bulkhead": {"bulkhead": {"max_concurrent": 20, "max_queue": 0}},
    "odd-statuses": {"retry": {"retry_on_status": [429, 503]}, "circuit_breaker": {"timeout": "250ms"}},
    "split-three-ways": {
        "services": {
            "user-service": {
                "routing": {
                    "subset_key": "track",
                    "split": {"stable": 1, "beta": 1, "alpha": 1},
                    "rules": [{"match": {"headers": {"X-Track": "alpha", "x-user": "qa"}}, "subset": "alpha"}],
                }
            }
        }
    },
    "other-namespace": {"discovery": {"namespace": "billing", "cluster_domain": "corp.local"}},
}


@pytest.mark.parametrize("case", sorted(RENDER_CASES))
def test_render_istio_output_validates_with_no_unknown_field(case: str) -> None:
    """For each kind of settings, both rendered documents pass the Istio models with nothing left unknown,
    and survive the YAML the command prints."""
    settings = MeshSettings(**RENDER_CASES[case])
    documents = render.istio_manifests(settings, "user-service")
    assert [d["kind"] for d in documents] == ["DestinationRule", "VirtualService"]
    problems = [problem for document in documents if (problem := errors(document))]
    assert not problems, "\n".join(problems)
    assert list(yaml.safe_load_all(render.to_yaml(documents, header="h"))) == documents


def test_render_follows_the_policy() -> None:
    """Outlier detection, the pool, the balancer and the retries come from the effective policy of the
    service, per-service overrides included."""
    settings = MeshSettings(
        environment="production",
        services={
            "pay": {
                "retry": {"max_retries": 1, "retry_on_status": [503]},
                "outlier_detection": {"consecutive_failures": 2, "base_ejection_time": "5s"},
                "load_balancer": {"session_affinity": False, "strategy": "round-robin"},
            }
        },
    )
    rule, route = render.istio_manifests(settings, "pay")
    traffic = rule["spec"]["trafficPolicy"]
    assert traffic["outlierDetection"]["consecutive5xxErrors"] == 2
    assert traffic["outlierDetection"]["baseEjectionTime"] == "5s"
    assert traffic["loadBalancer"]["simple"] == "ROUND_ROBIN"
    assert traffic["connectionPool"]["tcp"]["maxConnections"] == 500
    assert "subsets" not in rule["spec"]
    default = route["spec"]["http"][-1]
    assert default["route"] == [{"destination": {"host": "pay.default.svc.cluster.local"}}]
    retry_on = "connect-failure,refused-stream,reset,503"
    assert default["retries"] == {"attempts": 1, "perTryTimeout": "3s", "retryOn": retry_on}
    assert default["timeout"] == "30s"  # retry.max_elapsed of the production preset
    none = render.istio_manifests(MeshSettings(retry={"max_retries": 0}), "pay")[1]["spec"]["http"]
    assert [r["name"] for r in none] == ["default"] and none[0]["retries"] == {"attempts": 0}


def test_istio_mode_hands_retries_to_the_sidecar() -> None:
    """In istio mode the application's own policy retries nothing, hedges nothing and ejects nothing, while
    the rendered VirtualService carries the retries that were configured."""
    settings = MeshSettings(mode="istio", environment="production", retry={"hedge_delay": "50ms"})
    policy = settings.for_service("user-service")
    assert (policy.retry.max_retries, policy.retry.hedge_delay) == (0, None)
    assert not policy.outlier_detection.enabled and not policy.active_health_check.enabled
    assert policy.bulkhead == settings.bulkhead and policy.circuit_breaker == settings.circuit_breaker
    rule, route = render.istio_manifests(settings, "user-service")
    assert route["spec"]["http"][-1]["retries"]["attempts"] == settings.retry.max_retries == 10
    assert rule["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] == 5


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ({"v1": 90, "v2": 10}, [("v1", 90), ("v2", 10)]),
        ({"a": 1, "b": 1, "c": 1}, [("a", 34), ("b", 33), ("c", 33)]),
        ({"v1": 2, "v2": 1}, [("v1", 67), ("v2", 33)]),
        ({"v1": 0, "v2": 5}, [("v2", 100)]),
        ({"v1": 0.4, "v2": 99.6}, [("v2", 100)]),
    ],
)
def test_split_weights_become_whole_percentages_adding_to_100(
    split: dict[str, float], expected: list[tuple[str, int]]
) -> None:
    """Istio wants integer weights that add up to 100; a subset whose share rounds to 0 gets no route."""
    settings = MeshSettings(routing={"split": split})
    route = render.virtual_service(settings, "svc")["spec"]["http"][-1]["route"]
    assert [(r["destination"]["subset"], r["weight"]) for r in route] == expected


@pytest.mark.parametrize(
    ("service", "name", "namespace", "host"),
    [
        ("users", "users", "shop", "users.shop.svc.cluster.local"),
        ("users.billing", "users", "billing", "users.billing.svc.cluster.local"),
        ("users.billing.svc.cluster.local", "users", "billing", "users.billing.svc.cluster.local"),
    ],
)
def test_service_names_map_to_hosts_as_discovery_names_them(service: str, name: str, namespace: str, host: str) -> None:
    """`users`, `users.billing` and a full name give the host, name and namespace kubernetes-dns would use."""
    rule = render.destination_rule(MeshSettings(discovery={"namespace": "shop"}), service)
    assert (rule["metadata"]["name"], rule["metadata"]["namespace"], rule["spec"]["host"]) == (name, namespace, host)
